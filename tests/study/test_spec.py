"""Study files: validation before any training, expansion, stable ids that change with the configuration."""

import pytest

from medtransfer.study.spec import StudyError, bundle_command, load_study, parse_study
from tests.conftest import REPO_ROOT
from tests.study.conftest import tiny_study

STUDIES = REPO_ROOT / "studies"


def test_demo_expands_to_shared_pretraining_and_source_free_scratch(medtransfer_home):
    spec = load_study(STUDIES / "demo.yaml")
    runs = spec.expand()
    pre = [r for r in runs if r.kind == "pretrain"]
    fine = [r for r in runs if r.kind == "finetune"]
    grid = [r for r in fine if r.checkpoint_epoch is None]
    assert len(pre) == 2 and len(grid) == 4 + 2 * 3 * 2 * 2
    # analysis.transferability: epochs 10 and 20 of both sources × 2 seeds (epoch 30 = the grid's encoder @ 0.1)
    assert sorted({(r.objective, r.checkpoint_epoch) for r in fine if r.checkpoint_epoch}) == \
        [("conrec", 10), ("conrec", 20), ("supervised", 10), ("supervised", 20)] and len(fine) == len(grid) + 8
    assert len({r.run_id for r in runs}) == len(runs)
    scratch = [r for r in fine if r.strategy == "scratch"]
    assert len(scratch) == 4 and all(r.objective == "none" and r.depends_on is None for r in scratch)
    pre_ids = {r.run_id for r in pre}
    assert {r.depends_on for r in grid if r.strategy != "scratch"} == pre_ids  # each pretrained once, shared
    assert [r.run_id for r in load_study(STUDIES / "demo.yaml").expand()] == [r.run_id for r in runs]  # stable
    assert pre[0].run_id.startswith("pre-conrec-synthetic_2d-")
    assert any(r.run_id.startswith("ft-supervised-encoder_frozen-f0.5-s1-") for r in fine)


def test_real_studies_expand_to_the_full_grid(test_data):
    hippo = load_study(STUDIES / "hippocampus_lowdata.yaml", data_root=str(test_data / "msd_hippocampus"))
    runs = hippo.expand()
    # decoder and full from the classification source are not planned (it trains only the encoder)
    assert len(runs) == 4 + 4 * 4 * 4 * 3 - 2 * 4 * 3 + 2 * 4 * 3
    assert {r.strategy for r in runs if r.kind == "finetune"} == {
        "scratch", "encoder", "decoder", "full", "encoder_frozen", "random_encoder_frozen"}
    hc18 = load_study(STUDIES / "hc18_lowdata.yaml", data_root=str(test_data / "hc18_fetal_head"))
    assert hc18.bundle_root.name == "binary_seg_2d" and len(hc18.expand()) == 220 - 2 * 4 * 3  # no cls decoder/full


def test_changed_settings_change_ids_and_fine_tunes_follow_their_pretraining(medtransfer_home):
    base = {r.run_id for r in parse_study(tiny_study()).expand()}
    changed_pre = tiny_study()
    changed_pre["pretraining"][0]["settings"]["max_epochs"] = 3
    ids = {r.run_id for r in parse_study(changed_pre).expand()}
    scratch = {i for i in base if i.startswith("ft-none-scratch")}
    assert scratch <= ids  # scratch does not depend on the pretraining
    assert {i for i in base if i.startswith("ft-reconstruction")}.isdisjoint(ids)  # fine-tunes hash the source
    shared = tiny_study(settings={**tiny_study()["settings"], "learning_rate": 0.001})
    assert base.isdisjoint({r.run_id for r in parse_study(shared).expand()})


def test_bundle_command_passes_settings_and_source(medtransfer_home, tmp_path):
    spec = parse_study(tiny_study())
    run = next(r for r in spec.expand() if r.strategy == "encoder")
    command = bundle_command(run, spec.bundle_root, tmp_path / "out", source_checkpoint=tmp_path / "p.pt")
    text = " ".join(command)
    assert "transfer/encoder.yaml" in text and "--fraction 0.1" in text and "--filters [8, 16, 32]" in text
    assert command[command.index("--source_checkpoint") + 1] == str(tmp_path / "p.pt")
    assert command[command.index("--output_dir") + 1] == str(tmp_path / "out")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"finetune": {"strategies": ["scratch", "fancy"], "fractions": [0.1], "seeds": [0]}}, "unknown strategy 'fancy'"),
        ({"pretraining": [{"objective": "jigsaw"}]}, "unknown objective 'jigsaw'"),
        ({"bundle": "no_such_bundle"}, "unknown bundle 'no_such_bundle'"),
        ({"finetune": {"strategies": ["scratch"], "fractions": [0.3], "seeds": [0]}}, "fraction 0.3 is not in manifest"),
        ({"finetune": {"strategies": ["scratch"], "fractions": [0.1], "seeds": []}}, "zero fine-tuning runs"),
        ({"finetune": {"strategies": [], "fractions": [0.1], "seeds": [0]}}, "zero fine-tuning runs"),
        ({"settings": {"filterz": [8]}}, "unknown bundle setting 'filterz'"),
        ({"settings": {"seed": 3}}, "set by the study itself"),
        ({"pretraining": [], "finetune": {"strategies": ["encoder"], "fractions": [0.1], "seeds": [0]}},
         "no pretraining stage"),
        ({"data_manifest": "msd_hippocampus"}, "3D but the bundle trains a 2D"),
        ({"grid": {}}, "unknown study key"),
    ],
)
def test_bad_study_files_fail_before_training(changes, message, medtransfer_home, monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_DATA", raising=False)
    with pytest.raises(StudyError, match=message):
        parse_study(tiny_study(**changes))


def test_real_manifest_without_data_root_is_an_error(monkeypatch, medtransfer_home):
    monkeypatch.delenv("MEDTRANSFER_DATA", raising=False)
    with pytest.raises(StudyError, match="--data-root"):
        load_study(STUDIES / "hc18_lowdata.yaml")


def test_a_manifest_kept_in_its_data_root_is_found_by_name(tmp_path, medtransfer_home):
    """`medtransfer data slices` writes <name>.json next to the slices; the study names it and gives --data-root."""
    import json

    content = json.loads((REPO_ROOT / "data_manifests" / "synthetic_2d.json").read_text())
    content.pop("generator")
    content["name"] = "derived_2d"
    root = tmp_path / "derived"
    root.mkdir()
    (root / "derived_2d.json").write_text(json.dumps(content))
    spec = parse_study(tiny_study(data_manifest="derived_2d"), base=tmp_path, data_root=str(root))
    assert spec.target.path == (root / "derived_2d.json").resolve() and spec.target.data_root == str(root.resolve())
    with pytest.raises(StudyError, match="no manifest named 'derived_2d'"):
        parse_study(tiny_study(data_manifest="derived_2d"), base=tmp_path, data_root=str(tmp_path))


def test_analysis_block_expands_checkpoint_finetunes_and_is_validated(medtransfer_home):
    base = tiny_study(pretraining=[{"objective": "reconstruction",
                                    "settings": {"max_epochs": 4, "iterations_per_epoch": 2,
                                                 "checkpoint_epochs": [1, 2, 4, 9]}}])
    plain = parse_study(base)
    with_cka = parse_study({**base, "analysis": {"cka": True}})
    assert [r.run_id for r in with_cka.expand()] == [r.run_id for r in plain.expand()]  # CKA adds no runs
    spec = parse_study({**base, "analysis": {"transferability": {"strategy": "encoder", "fraction": 0.1}}})
    assert spec.stages[0]["checkpoint_epochs"] == [1, 2, 4]  # 9 > max_epochs is never written
    runs = spec.expand()
    extra = [r for r in runs if r.checkpoint_epoch is not None]
    # epochs 1 and 2 × seeds 0, 1; the final epoch (4) is the grid's encoder @ 0.1 run, reused
    assert sorted((r.checkpoint_epoch, r.seed) for r in extra) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r.source_file for r in extra} == {"checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt"}
    pre = [r for r in runs if r.kind == "pretrain"][0]
    assert pre.args["transferability_manifest"].endswith("synthetic_2d.json")
    assert pre.run_id != [r for r in plain.expand() if r.kind == "pretrain"][0].run_id
    outside = parse_study({**base, "analysis": {"transferability": {"strategy": "full", "fraction": 0.5}}})
    finals = [r for r in outside.expand() if r.checkpoint_epoch == 4]
    assert len(finals) == 2 and {r.source_file for r in finals} == {"pretrained.pt"}  # not in the grid: run it
    assert parse_study({**base, "analysis": {"transferability": True}}).analysis["transferability"] == \
        {"strategy": "encoder", "fraction": 0.1}


@pytest.mark.parametrize("analysis, message", [
    ({"ckaa": True}, "analysis: unknown key"),
    ({"cka_layers": "middle"}, "analysis.cka_layers"),
    ({"transferability": {"strategy": "scratch"}}, "must be a strategy that loads"),
    ({"transferability": {"fraction": 0.3}}, "fraction 0.3 is not in manifest"),
    ({"transferability": {"stage": "x"}}, "transferability: unknown key"),
])
def test_bad_analysis_blocks_are_refused(analysis, message, medtransfer_home):
    with pytest.raises(StudyError, match=message):
        parse_study(tiny_study(analysis=analysis))


def test_transferability_needs_a_pretraining_stage(medtransfer_home):
    content = tiny_study(pretraining=[], analysis={"transferability": True})
    content["finetune"]["strategies"] = ["scratch"]
    with pytest.raises(StudyError, match="needs a pretraining stage"):
        parse_study(content)


def test_strategies_a_source_cannot_feed_are_left_out_and_said(medtransfer_home):
    """A classification source trains only its encoder: decoder and full from it would be refused by ApplyTransfer
    after the study had started, so the grid does not plan them and the report says why."""
    content = tiny_study(pretraining=[{"objective": "classification", "name": "cls",
                                       "settings": {"max_epochs": 2, "iterations_per_epoch": 2}},
                                      {"objective": "reconstruction", "name": "rec",
                                       "settings": {"max_epochs": 2, "iterations_per_epoch": 2}}])
    content["finetune"]["strategies"] = ["scratch", "encoder", "decoder", "full"]
    spec = parse_study(content)
    planned = {(r.objective, r.strategy) for r in spec.expand() if r.kind == "finetune"}
    assert ("cls", "encoder") in planned and ("rec", "decoder") in planned and ("rec", "full") in planned
    assert ("cls", "decoder") not in planned and ("cls", "full") not in planned
    assert spec.not_planned() == ["decoder, full from `cls` not run: a classification source trains only its "
                                  "encoder, and these strategies load more"]
