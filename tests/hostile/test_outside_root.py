"""Issue 26's hostile cases: a path outside its root, a damaged file, a study of unstated size. Each is refused
before anything is read or trained, with the exact line asserted (cases in tests/hostile/hostile_cases.py)."""

import json

import numpy as np
import pytest

from tests.hostile import damaged_files as damaged
from tests.hostile import hostile_cases as cases
from tests.hostile.conftest import medtransfer


def _assert_case(case: cases.Case, guard, capsys, monkeypatch) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    guard.allow(*case.outputs).snapshot()
    result = medtransfer(case.argv, capsys)
    lines = [line.strip() for line in result.text.splitlines()]
    assert "Traceback" not in result.text, result.text
    assert case.line in lines, f"expected line\n{case.line}\nnot in:\n{result.text}"
    assert result.code == case.code, result.text


@pytest.mark.parametrize("make", cases.DATA_CASES, ids=[make.__name__ for make in cases.DATA_CASES])
def test_data_commands(make, guard, tmp_path, capsys, monkeypatch):
    case = make(tmp_path)
    _assert_case(case, guard, capsys, monkeypatch)
    if case.command == "data manifest":
        assert not (tmp_path / "m.json").exists()  # no manifest with an entry outside its folder, or a damaged one


@pytest.fixture(scope="module")
def model(tmp_path_factory, test_data):
    from tests.inference.test_bundle_loading import make_run

    return make_run(tmp_path_factory.mktemp("outside_model") / "run", test_data)


@pytest.mark.parametrize("make", cases.SEGMENT_CASES, ids=[make.__name__ for make in cases.SEGMENT_CASES])
def test_segment_names_the_scan_and_segments_the_others(make, model, guard, tmp_path, capsys, monkeypatch):
    case = make(tmp_path, model)
    _assert_case(case, guard, capsys, monkeypatch)
    import csv

    status = {row["scan"]: row["status"] for row in csv.DictReader(open(tmp_path / "masks" / "summary.csv"))}
    assert status.pop("good") == "ok" and (tmp_path / "masks" / "good_seg.nii.gz").is_file()
    assert list(status.values()) == ["failed"]
    assert sorted(p.name for p in (tmp_path / "masks").glob("*_seg.nii.gz")) == ["good_seg.nii.gz"]


@pytest.mark.parametrize("make", cases.STUDY_CASES, ids=[make.__name__ for make in cases.STUDY_CASES])
def test_study_refused_before_training(make, guard, tmp_path, capsys, monkeypatch):
    case = make(tmp_path)
    _assert_case(case, guard, capsys, monkeypatch)
    assert not (tmp_path / "study_dir" / "runs").exists()


# the ways out, on purpose ----------------------------------------------------------------------------------------
def test_allow_outside_root_reads_the_file_and_says_so(guard, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_ALLOW_OUTSIDE_ROOT", "0")  # restored after the test (main() sets it to 1)
    case = cases.check_relative_escape(tmp_path)
    guard.snapshot()
    result = medtransfer([*case.argv, "--allow-outside-root"], capsys)
    assert ("medtransfer: --allow-outside-root: paths may resolve outside their data root; every run records "
            "allow_outside_root in its run.json") in result.err.splitlines()
    assert f"hostile: 6 of 6 cases OK ({case.argv[-1].resolve()})" in result.out.splitlines(), result.text
    assert result.code == 0


def test_run_json_records_allow_outside_root(monkeypatch):
    from medtransfer.handlers.run_record import RunRecord

    record = RunRecord(run_directory=None, network=None, checkpoint=None)  # _settings() needs none of them
    monkeypatch.delenv("MEDTRANSFER_ALLOW_OUTSIDE_ROOT", raising=False)
    assert "allow_outside_root" not in record._settings()
    monkeypatch.setenv("MEDTRANSFER_ALLOW_OUTSIDE_ROOT", "1")
    assert record._settings()["allow_outside_root"] is True


def test_trusted_accepts_a_bundle_outside_the_project(tmp_path):
    from medtransfer.study.spec import load_study

    case = cases.study_bundle_absolute_outside(tmp_path)
    spec = load_study(case.argv[2], trusted=True)
    assert spec.bundle_root == (tmp_path / "outside" / "evil_bundle").resolve()


def test_a_symlink_inside_the_root_stays_allowed(tmp_path, capsys):
    path, root, content = cases.manifest_of(tmp_path)
    case = content["training"][0]
    moved = root / "images" / "moved.nii.gz"
    (root / case["image"]).rename(moved)
    (root / case["image"]).symlink_to(moved)
    result = medtransfer(["data", "check", path, "--data-root", root], capsys)
    assert result.code == 0 and "hostile: 6 of 6 cases OK" in result.out, result.text


def test_max_image_pixels_raised_lets_the_image_through(tmp_path, monkeypatch):
    from medtransfer.data.damaged import DamagedImageError, check_image_file

    wide = tmp_path / "wide.png"
    wide.write_bytes(damaged.png_bytes(3000, 400))
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(DamagedImageError, match=r"1\.2 megapixels\) exceeds the limit of 1\.0 megapixels"):
        check_image_file(wide)
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "2000000")
    check_image_file(wide)
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS == 2000000  # the reader is told the same limit
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DamagedImageError, match="MEDTRANSFER_MAX_IMAGE_PIXELS='lots': give a number of pixels"):
        check_image_file(wide)


def test_good_files_of_every_format_pass(tmp_path):
    from PIL import Image

    from medtransfer.data.damaged import check_image_file

    files = [damaged.nifti(tmp_path / "a.nii.gz"), damaged.nifti(tmp_path / "a.nii"), damaged.dicom_file(tmp_path / "a.dcm"),
             damaged.nrrd(tmp_path / "a.nrrd"), damaged.metaimage(tmp_path / "a.mha")]
    (tmp_path / "a.png").write_bytes(damaged.png_bytes(40, 30))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.tif")
    for path in [*files, tmp_path / "a.png", tmp_path / "a.tif"]:
        check_image_file(path, tmp_path)


# a study states its size -------------------------------------------------------------------------------------------
def test_study_plan_prints_the_table_and_trains_nothing(guard, tmp_path, capsys):
    path = cases._study(tmp_path)
    guard.snapshot()
    result = medtransfer(["study", "plan", path, "--study-dir", tmp_path / "sd"], capsys)
    assert result.code == 0, result.text
    assert result.out.splitlines() == [
        "study tiny: 13 runs, 13 to train, projected unknown with 1 worker(s)",
        "  stage                        runs  to train   per run  timed by",
        "  pretrain reconstruction         1         1   unknown  not measured yet",
        "  finetune scratch                4         4   unknown  not measured yet",
        "  finetune encoder                4         4   unknown  not measured yet",
        "  finetune decoder                4         4   unknown  not measured yet",
    ]


def test_projection_uses_this_machines_seconds_and_the_hours_threshold(tmp_path, monkeypatch, capsys):
    from medtransfer.study.size import StudyTooLargeError, state_size, study_size
    from medtransfer.study.spec import load_study

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDTRANSFER_HOME", str(home))
    (home / "run_seconds.json").write_text(json.dumps({"binary_seg_2d:pretrain": {"runs": 2, "seconds": 7200.0},
                                                       "binary_seg_2d:finetune": {"runs": 4, "seconds": 14400.0}}))
    spec = load_study(cases._study(tmp_path))
    size = study_size(spec, tmp_path / "sd", workers=2)
    assert size.projected_seconds == pytest.approx((1 * 3600 + 12 * 3600) / 2)  # 6.5 h over two workers
    monkeypatch.setenv("MEDTRANSFER_CONFIRM_HOURS", "6")
    with pytest.raises(StudyTooLargeError, match=r"a projected 6.5 h is above 6 h \(MEDTRANSFER_CONFIRM_HOURS\); "
                                                 "pass --yes"):
        state_size(spec, tmp_path / "sd", 2, yes=False)
    assert "study tiny: 13 runs, 13 to train, projected 6.5 h with 2 worker(s)" in capsys.readouterr().out
    state_size(spec, tmp_path / "sd", 2, yes=True)  # --yes goes on


class _Terminal:
    def isatty(self):
        return True


def test_a_terminal_is_asked_and_only_yes_starts(tmp_path, monkeypatch):
    from medtransfer.study.size import StudyTooLargeError, state_size
    from medtransfer.study.spec import load_study

    monkeypatch.setenv("MEDTRANSFER_CONFIRM_RUNS", "5")
    spec = load_study(cases._study(tmp_path))
    asked = []
    state_size(spec, None, 1, yes=False, ask=lambda q: asked.append(q) or "yes", stdin=_Terminal())
    assert asked == ["13 runs to train is above 5 (MEDTRANSFER_CONFIRM_RUNS). Start it? Type yes to go on: "]
    with pytest.raises(StudyTooLargeError, match="not started"):
        state_size(spec, None, 1, yes=False, ask=lambda q: "n", stdin=_Terminal())


def test_finished_runs_are_left_out_and_timed(tmp_path, monkeypatch):
    from medtransfer.study.folder import run_dir
    from medtransfer.study.size import machine_timings, record_timings, study_size
    from medtransfer.study.spec import load_study

    monkeypatch.setenv("MEDTRANSFER_HOME", str(tmp_path / "home"))
    spec = load_study(cases._study(tmp_path))
    study_dir = tmp_path / "sd"
    finished = [run for run in spec.expand() if run.kind == "finetune"][:3]
    for run, seconds in zip(finished, (30.0, 60.0, 90.0)):
        folder = run_dir(study_dir, run)
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"status": "finished", "wall_time_seconds": seconds}))
    size = study_size(spec, study_dir)
    assert (size.runs, size.to_run) == (13, 10)
    assert [s.seconds_per_run for s in size.stages if s.kind == "finetune"] == [60.0, 60.0, 60.0]
    record_timings(spec, study_dir)
    record_timings(spec, study_dir)  # each run is counted once
    assert machine_timings()["binary_seg_2d:finetune"] == {"runs": 3, "seconds": 180.0}
