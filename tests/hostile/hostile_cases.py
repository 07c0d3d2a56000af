"""Hostile cases of issue 26 (paths outside their root, damaged files, studies of unstated size), shared by
tests/hostile/test_outside_root.py and benchmarks/hostile_table.py.

Each maker builds its input under `tmp` (data in ``tmp/data``, the files an attacker points at in
``tmp/outside``) and returns a `Case`: the command line, the exact line the user must see, and what the benchmark
classifies by (the file the line must name, words that say the cause, whether the input leads outside its root).
The makers use only numpy, nibabel, PIL, pydicom, yaml and `medtransfer.data.manifest_builder.build_manifest`,
so that the benchmark can run them against an older checkout too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.hostile import damaged_files as damaged

REFUSAL = "refused before reading it (pass --allow-outside-root if you mean it)"


@dataclass
class Case:
    command: str  # the table's row: "data manifest", "data check", "segment", "study run"
    argv: list
    line: str  # the exact line expected (stripped), in stdout or stderr
    code: int  # the exit status expected
    names: str  # what the line must name (the file) for the benchmark to count it as clear
    causes: tuple[str, ...]  # words of which one must say the cause
    escape: bool = False  # the input leads outside its root: going on means reading it
    env: dict = field(default_factory=dict)
    outputs: tuple = ()  # folders the command may write


def outside(tmp: Path) -> Path:
    folder = tmp / "outside"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def secret_nifti(tmp: Path, name: str = "secret.nii.gz") -> Path:
    """A valid image outside the data root: a reader would open it without complaint."""
    rng = np.random.default_rng(7)
    return damaged.nifti(outside(tmp) / name, rng.normal(size=(12, 12, 8)).astype(np.float32))


def dataset_3d(folder: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for index in range(n):
        image = rng.normal(size=(12, 12, 8)).astype(np.float32)
        damaged.nifti(folder / "images" / f"case{index}.nii.gz", image)
        damaged.nifti(folder / "labels" / f"case{index}.nii.gz", (image > 0.8).astype(np.uint8))
    return folder


def dataset_2d(folder: Path, n: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / f"case{index}.png")
        Image.fromarray((image > 200).astype(np.uint8)).save(folder / "labels" / f"case{index}.png")
    return folder


def manifest_of(tmp: Path, dimensions: int = 3) -> tuple[Path, Path, dict]:
    """(manifest path, data root, content) of a good 6-case data set."""
    from medtransfer.data.manifest_builder import build_manifest

    root = (dataset_3d if dimensions == 3 else dataset_2d)(tmp / "data")
    content = build_manifest(root, name="hostile", test_fraction=0.34, validation_fraction=0.17)
    path = tmp / "hostile.json"
    path.write_text(json.dumps(content))
    return path, root, content


def _write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


# `data check`: entries of a manifest ---------------------------------------------------------------------------
def _check_entry(tmp: Path, entry: str | None, make=None, key: str = "image", dimensions: int = 3, **extra) -> Case:
    """`data check` of a manifest whose first training case's `key` is `entry` (made by `make(path)` when given)."""
    path, root, content = manifest_of(tmp, dimensions)
    case = content["training"][0]
    if make is not None:
        make(root / entry)
    case[key] = entry
    _write(path, content)
    return path, root, case["id"]


def _outside_line(manifest: Path, case_id: str, key: str, entry: str, target: Path | None, root: Path) -> str:
    via = f" resolves to {target}, which" if target is not None else ""
    return (f"FAIL training/{case_id}: {manifest}: training case {case_id!r} {key} {entry!r}{via} lies outside the "
            f"root {root.resolve()}; {REFUSAL}")


def check_relative_escape(tmp: Path) -> Case:
    secret = secret_nifti(tmp)
    path, root, case_id = _check_entry(tmp, "../outside/secret.nii.gz")
    return Case("data check", ["data", "check", path, "--data-root", root],
                _outside_line(path, case_id, "image", "../outside/secret.nii.gz", secret, root), 1,
                "secret.nii.gz", ("outside",), escape=True)


def check_absolute_escape(tmp: Path) -> Case:
    secret = secret_nifti(tmp)
    path, root, case_id = _check_entry(tmp, str(secret))
    return Case("data check", ["data", "check", path, "--data-root", root],
                _outside_line(path, case_id, "image", str(secret), None, root), 1, "secret.nii.gz", ("outside",),
                escape=True)


def check_label_escape(tmp: Path) -> Case:
    secret = secret_nifti(tmp, "secret_label.nii.gz")
    path, root, case_id = _check_entry(tmp, "../outside/secret_label.nii.gz", key="label")
    return Case("data check", ["data", "check", path, "--data-root", root],
                _outside_line(path, case_id, "label", "../outside/secret_label.nii.gz", secret, root), 1,
                "secret_label.nii.gz", ("outside",), escape=True)


def check_symlink_escape(tmp: Path) -> Case:
    secret = secret_nifti(tmp)
    path, root, content = manifest_of(tmp)
    case = content["training"][0]
    link = root / case["image"]
    link.unlink()
    link.symlink_to(secret)
    return Case("data check", ["data", "check", path, "--data-root", root],
                _outside_line(path, case["id"], "image", case["image"], secret, root), 1, case["image"],
                ("outside",), escape=True)


def check_nrrd_detached_escape(tmp: Path) -> Case:
    secret = outside(tmp) / "secret.raw"
    secret.write_bytes(b"\0" * 8 * 8 * 4 * 4)
    path, root, case_id = _check_entry(tmp, "images/detached.nrrd",
                                       lambda p: damaged.nrrd(p, data_file="../../outside/secret.raw"))
    entry = root / "images" / "../../outside/secret.raw"
    line = (f"FAIL training/{case_id}: {root / 'images' / 'detached.nrrd'}: data file {str(entry)!r} resolves to "
            f"{secret}, which lies outside the root {root.resolve()}; {REFUSAL}")
    return Case("data check", ["data", "check", path, "--data-root", root], line, 1, "secret.raw", ("outside",),
                escape=True)


def check_metaimage_detached_escape(tmp: Path) -> Case:
    secret = outside(tmp) / "secret.raw"
    secret.write_bytes(b"\0" * 8 * 8 * 4 * 4)
    path, root, case_id = _check_entry(tmp, "images/detached.mhd",
                                       lambda p: damaged.metaimage(p, data_file=str(secret)))
    line = (f"FAIL training/{case_id}: {root / 'images' / 'detached.mhd'}: ElementDataFile {str(secret)!r} lies "
            f"outside the root {root.resolve()}; {REFUSAL}")
    return Case("data check", ["data", "check", path, "--data-root", root], line, 1, "secret.raw", ("outside",),
                escape=True)


def _damaged_check(tmp: Path, entry: str, make, claim: str, dimensions: int = 3, env=None) -> Case:
    path, root, case_id = _check_entry(tmp, entry, make, dimensions=dimensions)
    return Case("data check", ["data", "check", path, "--data-root", root],
                f"FAIL training/{case_id}: {root / entry}: {claim}", 1, Path(entry).name,
                ("truncated", "megapixels", "not a readable"), env=env or {})


def check_nifti_claims_4000(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/big.nii", damaged.nifti_claiming,
                          "header claims 4000×4000×4000 float32 (238 GiB) but the file holds 2.0 KiB: truncated or "
                          "not a NIfTI")


def check_nifti_gz_claims_4000(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/big.nii.gz", damaged.nifti_claiming,
                          "header claims 4000×4000×4000 float32 (238 GiB) but the file holds 64 B (2.0 KiB "
                          "uncompressed): truncated or not a NIfTI")


def check_truncated_nifti(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.nii", lambda p: damaged.truncated_nifti(p, keep=1000),
                          "header claims 12×12×8 float32 (4.5 KiB) but the file holds 1000 B: truncated or not a NIfTI")


def check_truncated_nrrd(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.nrrd", lambda p: damaged.nrrd(p, payload=10),
                          "NRRD header claims 8×8×4 float (1.0 KiB) but the file holds 10 B: truncated")


def check_truncated_metaimage(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.mha", lambda p: damaged.metaimage(p, payload=3),
                          "MetaImage header claims 8×8×4 MET_FLOAT (1.0 KiB) but the file holds 3 B: truncated")


def check_truncated_dicom(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.dcm", damaged.truncated_dicom,
                          "DICOM pixel data of 2.0 KiB ends after the file (1.6 KiB): truncated (copy the series again)")


def check_dicom_short_pixels(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/short.dcm", damaged.dicom_short_pixels,
                          "DICOM header claims 512×512 16-bit pixels (512 KiB) but the pixel data holds 2.0 KiB: "
                          "truncated or a wrong header")


def check_dicom_not_dicom(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/text.dcm", lambda p: p.write_text("a note, not a scan\n"),
                          "not a readable DICOM file (File is missing DICOM File Meta Information header or the 'DICM' "
                          "prefix is missing from the header. Use force=True to force reading.)")


def check_png_bomb(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/bomb.png", damaged.png_bomb,
                          "image of 40000×40000 (1,600 megapixels) exceeds the limit of 89 megapixels (a "
                          "decompression bomb or a mislabelled file); set MEDTRANSFER_MAX_IMAGE_PIXELS to allow it",
                          dimensions=2)


def check_png_over_a_lowered_limit(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/wide.png", lambda p: p.write_bytes(damaged.png_bytes(3000, 400)),
                          "image of 3000×400 (1.2 megapixels) exceeds the limit of 0.1 megapixels (a decompression bomb or "
                          "a mislabelled file); set MEDTRANSFER_MAX_IMAGE_PIXELS to allow it", dimensions=2,
                          env={"MEDTRANSFER_MAX_IMAGE_PIXELS": "100000"})


def check_truncated_png(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.png", damaged.truncated_png,
                          "PNG of 64×64 ends after 2.1 KiB, inside its data: truncated (copy it again)", dimensions=2)


def check_tiff_bomb(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/bomb.tif", damaged.tiff_bomb,
                          "image of 30000×30000 (900 megapixels) exceeds the limit of 89 megapixels (a decompression "
                          "bomb or a mislabelled file); set MEDTRANSFER_MAX_IMAGE_PIXELS to allow it", dimensions=2)


def check_truncated_tiff(tmp: Path) -> Case:
    return _damaged_check(tmp, "images/cut.tif", damaged.truncated_tiff,
                          "TIFF of 64×64 names image data up to byte 4,218 but the file holds 2,000 bytes: truncated "
                          "(copy it again)", dimensions=2)


# `data manifest`: the folder it scans -----------------------------------------------------------------------------
def _scanned(tmp: Path, change) -> tuple[Path, Path]:
    folder = dataset_3d(tmp / "data")
    change(folder)
    return folder, tmp / "m.json"


def _manifest_case(folder: Path, output: Path, line: str, names: str, causes, escape=False) -> Case:
    return Case("data manifest", ["data", "manifest", folder, "--output", output], line, 2, names, causes,
                escape=escape)


def manifest_image_symlink(tmp: Path) -> Case:
    secret = secret_nifti(tmp)

    def link(folder):
        (folder / "images" / "case3.nii.gz").unlink()
        (folder / "images" / "case3.nii.gz").symlink_to(secret)

    folder, output = _scanned(tmp, link)
    line = (f"error: {folder}: case 'case3' image 'images/case3.nii.gz' resolves to {secret}, which lies outside the "
            f"root {folder.resolve()}; {REFUSAL}")
    return _manifest_case(folder, output, line, "case3.nii.gz", ("outside",), escape=True)


def manifest_label_symlink(tmp: Path) -> Case:
    secret = secret_nifti(tmp, "secret_label.nii.gz")

    def link(folder):
        (folder / "labels" / "case2.nii.gz").unlink()
        (folder / "labels" / "case2.nii.gz").symlink_to(secret)

    folder, output = _scanned(tmp, link)
    line = (f"error: {folder}: case 'case2' label 'labels/case2.nii.gz' resolves to {secret}, which lies outside the "
            f"root {folder.resolve()}; {REFUSAL}")
    return _manifest_case(folder, output, line, "case2.nii.gz", ("outside",), escape=True)


def manifest_images_folder_symlink(tmp: Path) -> Case:
    elsewhere = outside(tmp) / "images"

    def link(folder):
        shutil.move(str(folder / "images"), str(elsewhere))
        (folder / "images").symlink_to(elsewhere, target_is_directory=True)

    folder, output = _scanned(tmp, link)
    line = (f"error: {folder}: case 'case0' image 'images/case0.nii.gz' resolves to {elsewhere / 'case0.nii.gz'}, "
            f"which lies outside the root {folder.resolve()}; {REFUSAL}")
    return _manifest_case(folder, output, line, "case0.nii.gz", ("outside",), escape=True)


def manifest_nrrd_detached_escape(tmp: Path) -> Case:
    secret = outside(tmp) / "secret.raw"
    secret.write_bytes(b"\0" * 8 * 8 * 4 * 4)

    def add(folder):
        for sub in ("images", "labels"):
            damaged.nrrd(folder / sub / "case9.nrrd", data_file=str(secret))

    folder, output = _scanned(tmp, add)
    line = (f"error: {folder / 'images' / 'case9.nrrd'}: data file {str(secret)!r} lies outside the root "
            f"{folder.resolve()}; {REFUSAL}")
    return _manifest_case(folder, output, line, "secret.raw", ("outside",), escape=True)


def _manifest_damaged(tmp: Path, name: str, make, claim: str) -> Case:
    def add(folder):
        make(folder / "images" / name)
        damaged.nifti(folder / "labels" / name, np.zeros((12, 12, 8), np.uint8)) if name.endswith(".nii.gz") else \
            make(folder / "labels" / name)

    folder, output = _scanned(tmp, add)
    return _manifest_case(folder, output, f"error: {folder / 'images' / name}: {claim}", name,
                          ("truncated", "megapixels"))


def manifest_nifti_claims_4000(tmp: Path) -> Case:
    return _manifest_damaged(tmp, "case4.nii.gz", damaged.nifti_claiming,
                             "header claims 4000×4000×4000 float32 (238 GiB) but the file holds 64 B (2.0 KiB "
                             "uncompressed): truncated or not a NIfTI")


def manifest_truncated_nifti(tmp: Path) -> Case:
    return _manifest_damaged(tmp, "case2.nii.gz", damaged.truncated_nifti,
                             "header claims 12×12×8 float32 (4.5 KiB) but the file holds 100 B (4.1 KiB uncompressed): "
                             "truncated or not a NIfTI")


def manifest_truncated_nrrd(tmp: Path) -> Case:
    return _manifest_damaged(tmp, "case9.nrrd", lambda p: damaged.nrrd(p, payload=10),
                             "NRRD header claims 8×8×4 float (1.0 KiB) but the file holds 10 B: truncated")


def manifest_png_bomb(tmp: Path) -> Case:
    folder = dataset_2d(tmp / "data")
    damaged.png_bomb(folder / "images" / "case3.png")
    line = (f"error: {folder / 'images' / 'case3.png'}: image of 40000×40000 (1,600 megapixels) exceeds the limit of "
            "89 megapixels (a decompression bomb or a mislabelled file); set MEDTRANSFER_MAX_IMAGE_PIXELS to allow it")
    return _manifest_case(folder, tmp / "m.json", line, "case3.png", ("megapixels", "decompression"))


def manifest_truncated_png(tmp: Path) -> Case:
    folder = dataset_2d(tmp / "data")
    damaged.truncated_png(folder / "images" / "case2.png")
    line = f"error: {folder / 'images' / 'case2.png'}: PNG of 64×64 ends after 2.1 KiB, inside its data: truncated " \
           "(copy it again)"
    return _manifest_case(folder, tmp / "m.json", line, "case2.png", ("truncated",))


# `segment`: the scans of an input folder (needs a model folder: `model`) ----------------------------------------
def _segment_case(tmp: Path, model: Path, make, bad: str, line: str, causes, escape=False) -> Case:
    scans = tmp / "scans"
    rng = np.random.default_rng(0)
    damaged.nifti(scans / "good.nii.gz", rng.normal(size=(20, 20, 12)).astype(np.float32),
                  np.diag([1.5, 1.5, 2.0, 1.0]))
    make(scans / bad)
    output = tmp / "masks"
    return Case("segment", ["segment", model, scans, "--output", output, "--no-progress"], line, 1, bad, causes,
                escape=escape, outputs=(output,))


def segment_symlink_escape(tmp: Path, model: Path) -> Case:
    secret = secret_nifti(tmp)
    scans = tmp / "scans"
    return _segment_case(tmp, model, lambda p: p.symlink_to(secret), "linked.nii.gz",
                         f"error: {scans}: input {str(scans / 'linked.nii.gz')!r} resolves to {secret}, which lies "
                         f"outside the root {scans.resolve()}; {REFUSAL}", ("outside",), escape=True)


def segment_nifti_claims_4000(tmp: Path, model: Path) -> Case:
    scans = tmp / "scans"
    return _segment_case(tmp, model, damaged.nifti_claiming, "big.nii",
                         f"error: {scans / 'big.nii'}: header claims 4000×4000×4000 float32 (238 GiB) but the file "
                         "holds 2.0 KiB: truncated or not a NIfTI", ("truncated",))


def segment_truncated_nifti_gz(tmp: Path, model: Path) -> Case:
    scans = tmp / "scans"
    return _segment_case(tmp, model, damaged.truncated_nifti, "cut.nii.gz",
                         f"error: {scans / 'cut.nii.gz'}: header claims 12×12×8 float32 (4.5 KiB) but the file holds "
                         "100 B (4.1 KiB uncompressed): truncated or not a NIfTI", ("truncated",))


def segment_truncated_metaimage(tmp: Path, model: Path) -> Case:
    scans = tmp / "scans"
    return _segment_case(tmp, model, lambda p: damaged.metaimage(p, payload=3), "cut.mha",
                         f"error: {scans / 'cut.mha'}: MetaImage header claims 8×8×4 MET_FLOAT (1.0 KiB) but the file "
                         "holds 3 B: truncated", ("truncated",))


def segment_nrrd_detached_escape(tmp: Path, model: Path) -> Case:
    secret = outside(tmp) / "secret.raw"
    secret.write_bytes(b"\0" * 20 * 20 * 12 * 4)
    scans = tmp / "scans"
    return _segment_case(tmp, model, lambda p: damaged.nrrd(p, sizes=(20, 20, 12), data_file=str(secret)),
                         "detached.nrrd",
                         f"error: {scans / 'detached.nrrd'}: data file {str(secret)!r} lies outside the root "
                         f"{scans.resolve()}; {REFUSAL}", ("outside",), escape=True)


# `study run`: the bundle key, the size, the target's entries ------------------------------------------------------
def _study(tmp: Path, **changes) -> Path:
    import yaml

    from tests.study.conftest import tiny_study

    project = tmp / "project"
    project.mkdir(parents=True, exist_ok=True)
    path = project / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(**changes), sort_keys=False))
    return path


def _outside_bundle(tmp: Path) -> Path:
    from medtransfer import registry

    copy = outside(tmp) / "evil_bundle"
    shutil.copytree(registry.bundles_dir() / "binary_seg_2d", copy)
    return copy


def study_bundle_absolute_outside(tmp: Path) -> Case:
    from medtransfer import registry

    bundle = _outside_bundle(tmp)
    path = _study(tmp, bundle=str(bundle))
    roots = ", ".join(map(str, dict.fromkeys([path.parent.resolve(), Path.cwd().resolve(),
                                               registry.bundles_dir().resolve()])))
    line = (f"error: {path}: bundle {str(bundle)!r} resolves to {bundle}, outside the study file's folder, the "
            f"working directory and the packaged bundles ({roots}); its configs would run as code in every run: "
            "pass --trusted if you wrote it or have read it")
    return Case("study run", ["study", "run", path, "--study-dir", tmp / "study_dir", "--no-progress"], line, 2,
                "evil_bundle", ("outside", "--trusted"), escape=True, outputs=(tmp / "study_dir",))


def study_bundle_symlink_outside(tmp: Path) -> Case:
    from medtransfer import registry

    bundle = _outside_bundle(tmp)
    path = _study(tmp, bundle="my_bundle")
    (path.parent / "my_bundle").symlink_to(bundle, target_is_directory=True)
    roots = ", ".join(map(str, dict.fromkeys([path.parent.resolve(), Path.cwd().resolve(),
                                               registry.bundles_dir().resolve()])))
    line = (f"error: {path}: bundle 'my_bundle' resolves to {bundle}, outside the study file's folder, the working "
            f"directory and the packaged bundles ({roots}); its configs would run as code in every run: pass "
            "--trusted if you wrote it or have read it")
    return Case("study run", ["study", "run", path, "--study-dir", tmp / "study_dir", "--no-progress"], line, 2,
                "my_bundle", ("outside", "--trusted"), escape=True, outputs=(tmp / "study_dir",))


def study_100000_seeds(tmp: Path) -> Case:
    from tests.study.conftest import tiny_study

    path = _study(tmp, finetune={**tiny_study()["finetune"], "seeds": list(range(100000))})
    line = (f"error: {path}: the grid has up to 1,200,001 runs (3 strategies × 2 fractions × 100,000 seeds per "
            "source), more than 100,000 that a study may hold; check finetune.seeds and finetune.fractions")
    return Case("study run", ["study", "run", path, "--study-dir", tmp / "study_dir", "--no-progress"], line, 2,
                "1,200,001", ("runs",), outputs=(tmp / "study_dir",))


def study_601_runs_without_yes(tmp: Path) -> Case:
    from tests.study.conftest import tiny_study

    path = _study(tmp, finetune={**tiny_study()["finetune"], "seeds": list(range(100))})
    line = ("error: study 'tiny': 601 runs to train is above 500 (MEDTRANSFER_CONFIRM_RUNS); pass --yes to start it, "
            "or `medtransfer study plan` to see the table; nothing was trained")
    return Case("study run", ["study", "run", path, "--study-dir", tmp / "study_dir", "--no-progress"], line, 2,
                "601", ("--yes",), outputs=(tmp / "study_dir",))


def study_target_entry_outside(tmp: Path) -> Case:
    """The target manifest of a study names a file outside its data root: the leakage guard would read it."""
    from PIL import Image

    path, root, content = manifest_of(tmp, dimensions=2)
    secret = outside(tmp) / "secret.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(secret)
    case = content["test"][0]
    case["image"] = "../outside/secret.png"
    _write(path, content)
    study = _study(tmp, data_manifest=str(path), data_root=str(root), pretraining=[])
    study_content = __import__("yaml").safe_load(study.read_text())
    study_content["finetune"]["strategies"] = ["scratch"]
    study.write_text(__import__("yaml").safe_dump(study_content, sort_keys=False))
    line = (f"error: {path.resolve()}: test case {case['id']!r} image '../outside/secret.png' resolves to {secret}, "
            f"which lies outside the root {root.resolve()}; {REFUSAL}")
    return Case("study run", ["study", "run", study, "--study-dir", tmp / "study_dir", "--no-progress"], line, 2,
                "secret.png", ("outside",), escape=True, outputs=(tmp / "study_dir",))


DATA_CASES = [check_relative_escape, check_absolute_escape, check_label_escape, check_symlink_escape,
              check_nrrd_detached_escape, check_metaimage_detached_escape, check_nifti_claims_4000,
              check_nifti_gz_claims_4000, check_truncated_nifti, check_truncated_nrrd, check_truncated_metaimage,
              check_truncated_dicom, check_dicom_short_pixels, check_dicom_not_dicom, check_png_bomb,
              check_png_over_a_lowered_limit, check_truncated_png, check_tiff_bomb, check_truncated_tiff,
              manifest_image_symlink, manifest_label_symlink, manifest_images_folder_symlink,
              manifest_nrrd_detached_escape, manifest_nifti_claims_4000, manifest_truncated_nifti,
              manifest_truncated_nrrd, manifest_png_bomb, manifest_truncated_png]
SEGMENT_CASES = [segment_symlink_escape, segment_nifti_claims_4000, segment_truncated_nifti_gz,
                 segment_truncated_metaimage, segment_nrrd_detached_escape]
STUDY_CASES = [study_bundle_absolute_outside, study_bundle_symlink_outside, study_100000_seeds,
               study_601_runs_without_yes, study_target_entry_outside]
