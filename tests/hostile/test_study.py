"""`medtransfer study run|status|report` on hostile study files: refused before anything runs or is written."""

import subprocess
import sys
import time

import pytest
import yaml

from medtransfer.study.spec import parse_study
from tests.hostile.conftest import clear_error, medtransfer
from tests.study.conftest import tiny_study

PAYLOAD = "$__import__('pathlib').Path('PWNED').touch() or 1"


def _stage(**changes):
    return [{**tiny_study()["pretraining"][0], **changes}]


def _finetune(**changes):
    return {**tiny_study()["finetune"], **changes}


# (case id, study content, words the message must hold)
CASES = [
    # executable payloads: study files are data
    ("payload-settings", tiny_study(settings={"max_epochs": PAYLOAD}), ["settings.max_epochs", "--trusted"]),
    ("payload-reference", tiny_study(settings={"learning_rate": "@network_def"}), ["settings.learning_rate"]),
    ("payload-macro", tiny_study(settings={"patch_size": "%/etc/passwd#root"}), ["settings.patch_size"]),
    ("payload-nested-list", tiny_study(settings={"filters": [8, PAYLOAD, 32]}), ["settings.filters[1]"]),
    ("payload-stage-settings", tiny_study(pretraining=_stage(settings={"max_epochs": PAYLOAD})),
     ["pretraining[0].settings.max_epochs"]),
    ("payload-finetune-settings", tiny_study(finetune=_finetune(settings={"max_epochs": PAYLOAD})),
     ["max_epochs", "--trusted"]),
    ("payload-import-statement", tiny_study(settings={"batch_size": "$import os"}), ["settings.batch_size"]),
    ("payload-label-map", tiny_study(pretraining=_stage(label_map={1: PAYLOAD})), ["label_map"]),
    ("payload-seed", tiny_study(pretraining=_stage(seed=PAYLOAD)), ["pretraining[0].seed"]),
    # names that would escape runs/studies/
    ("name-parent", tiny_study(name="../../.."), ["name", "not a plain name"]),
    ("name-absolute", tiny_study(name="/tmp/x"), ["not a plain name"]),
    ("name-slash", tiny_study(name="a/b"), ["not a plain name"]),
    ("name-hidden", tiny_study(name=".hidden"), ["not a plain name"]),
    ("name-dash", tiny_study(name="-rf"), ["not a plain name"]),
    ("name-space-newline", tiny_study(name="a\nb"), ["not a plain name"]),
    ("name-non-ascii", tiny_study(name="stüdy"), ["not a plain name"]),
    ("name-missing", tiny_study(name=""), ["needs a `name`"]),
    ("stage-name-parent", tiny_study(pretraining=_stage(name="../../x")), ["pretraining[0].name"]),
    ("stage-name-absolute", tiny_study(pretraining=_stage(name="/etc")), ["pretraining[0].name"]),
    # numbers out of range or of the wrong type
    ("fraction-above-1", tiny_study(finetune=_finetune(fractions=[1.5])), ["1.5", "outside (0, 1]"]),
    ("fraction-negative", tiny_study(finetune=_finetune(fractions=[-0.5])), ["-0.5", "outside (0, 1]"]),
    ("fraction-zero", tiny_study(finetune=_finetune(fractions=[0])), ["outside (0, 1]"]),
    ("fraction-nan", tiny_study(finetune=_finetune(fractions=[float("nan")])), ["nan", "outside (0, 1]"]),
    ("fraction-text", tiny_study(finetune=_finetune(fractions=["half"])), ["finetune.fractions[0]", "not a number"]),
    ("fractions-not-list", tiny_study(finetune=_finetune(fractions="0.1")), ["finetune.fractions", "must be a list"]),
    ("stage-fraction-above-1", tiny_study(pretraining=_stage(fraction=2)), ["pretraining[0]", "outside (0, 1]"]),
    ("transferability-fraction", tiny_study(analysis={"transferability": {"fraction": 1.5}}),
     ["analysis.transferability", "outside (0, 1]"]),
    ("seed-text", tiny_study(finetune=_finetune(seeds=["zero"])), ["finetune.seeds[0]", "not an integer"]),
    ("label-map-all-zero", tiny_study(pretraining=_stage(label_map={1: 0, 2: 0})), ["every label value to 0"]),
    ("label-map-value-2", tiny_study(pretraining=_stage(label_map={1: 2})), ["label_map", "onto 0 or 1"]),
    ("label-map-not-mapping", tiny_study(pretraining=_stage(label_map=[1, 2])), ["label_map", "mapping"]),
    ("label-map-text-key", tiny_study(pretraining=_stage(label_map={"tumour": 1})), ["'tumour'"]),
    # structure
    ("settings-not-mapping", tiny_study(settings=["max_epochs", 1]), ["settings: must be a mapping"]),
    ("settings-reserved-key", tiny_study(settings={"output_dir": "/tmp"}), ["'output_dir' is set by the study"]),
    ("settings-unknown-key", tiny_study(settings={"max_epoch": 1}), ["unknown bundle setting 'max_epoch'"]),
    ("unknown-top-key", tiny_study(evil=1), ["unknown study key(s): evil"]),
    ("unknown-strategy", tiny_study(finetune=_finetune(strategies=["os.system"])), ["unknown strategy"]),
    ("strategies-not-list", tiny_study(finetune=_finetune(strategies="scratch")), ["finetune.strategies"]),
    ("unknown-objective", tiny_study(pretraining=_stage(objective="../../x")), ["unknown objective"]),
    ("bundle-outside", tiny_study(bundle="/etc"), ["unknown bundle '/etc'"]),
    ("manifest-missing", tiny_study(data_manifest="../../../etc/passwd"), ["data manifest"]),
    ("spatial-dims-text", tiny_study(spatial_dims="two"), ["spatial_dims", "not an integer"]),
]


@pytest.mark.parametrize("content, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_study_file_refused_before_anything_runs(content, needles, guard, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))
    guard.snapshot()
    result = medtransfer(["study", "run", path, "--no-progress"], capsys)
    clear_error(result, 2, str(path), *needles)
    assert not (tmp_path / "cwd" / "runs").exists() and not (tmp_path / "cwd" / "PWNED").exists()


RAW_FILES = [
    ("not-a-mapping", b"- name: x\n- y\n", "must be a YAML mapping"),
    ("empty-file", b"", "must be a YAML mapping"),
    ("scalar", b"42\n", "must be a YAML mapping"),
    ("invalid-yaml", b"name: [unclosed\n", "not valid YAML"),
    ("non-utf8", b"name: \xff\xfe\x00bad\n", "not valid YAML"),
    ("python-tag", b"name: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    ("huge-alias-bomb", b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nname: [*c]\n", "unknown study key(s): a, b, c"),
]


@pytest.mark.parametrize("raw, needle", [c[1:] for c in RAW_FILES], ids=[c[0] for c in RAW_FILES])
def test_unreadable_study_files(raw, needle, guard, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_bytes(raw)
    guard.snapshot()
    clear_error(medtransfer(["study", "run", path, "--no-progress"], capsys), 2, str(path), needle)
    assert not (tmp_path / "cwd" / "PWNED").exists()


def test_study_file_that_is_a_folder_or_missing(guard, tmp_path, capsys):
    guard.snapshot()
    clear_error(medtransfer(["study", "run", tmp_path, "--no-progress"], capsys), 2, "study file not found")
    clear_error(medtransfer(["study", "run", tmp_path / "nope.yaml"], capsys), 2, "nope.yaml")


def test_trusted_lifts_the_expression_refusal_only_when_asked(medtransfer_home):
    from medtransfer.study.spec import StudyError

    content = tiny_study(settings={"learning_rate": "$0.5 * 0.002"})
    with pytest.raises(StudyError, match="settings.learning_rate"):
        parse_study(content)
    spec = parse_study(content, trusted=True)
    assert spec.trusted and {run.args["learning_rate"] for run in spec.expand()} == {"$0.5 * 0.002"}


def test_a_foreign_non_empty_study_dir_is_refused_untouched(guard, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study()))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"jpeg")
    guard.snapshot()
    result = medtransfer(["study", "run", path, "--study-dir", tmp_path / "photos", "--no-progress"], capsys)
    clear_error(result, 2, "is not empty and holds no study.json")


def test_a_study_dir_in_use_by_another_process_is_refused(guard, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study()))
    study_dir = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from medtransfer.folder_lock import FolderLock; "
        f"FolderLock({str(study_dir)!r}, 'study folder').acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        guard.allow(study_dir).snapshot()
        result = medtransfer(["study", "run", path, "--study-dir", study_dir, "--no-progress"], capsys)
        clear_error(result, 2, f"study folder {study_dir} is in use by process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert not (study_dir / "study.json").exists()


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "is not a study folder"),
    (lambda d: (d / "study.json").write_text("{not json"), "is not a study folder"),
    (lambda d: (d / "study.json").write_bytes(b""), "is not a study folder"),
], ids=["no-record", "corrupt-record", "empty-record"])
@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_broken_study_folder(setup, needle, command, guard, tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    setup(folder)
    guard.snapshot()
    clear_error(medtransfer(["study", command, folder], capsys), 2, str(folder), needle)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_an_empty_validation_or_test_split_is_refused_at_the_start(split, guard, tmp_path, capsys):
    import json

    from tests.conftest import REPO_ROOT

    content = json.loads((REPO_ROOT / "data_manifests" / "synthetic_2d.json").read_text())
    content[split] = []
    (tmp_path / "empty_split.json").write_text(json.dumps(content))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(data_manifest="empty_split.json")))
    guard.snapshot()
    result = medtransfer(["study", "run", path, "--no-progress"], capsys)
    clear_error(result, 2, f"the {split} split is empty", f"--{split}-fraction")
