"""The synthetic phantom generator and its on-disk cache (the embedded default data set)."""

import functools
import json
import logging
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medtransfer.data import synthetic
from medtransfer.data.synthetic import (
    SYNTHETIC_VERSION,
    case_names,
    default_home,
    ensure_synthetic_dataset,
    phantom_case,
    synthetic_dataset_root,
)

SHAPE_2D = (128, 128)
SHAPE_3D = (48, 48, 48)
GEOMETRIES = [pytest.param(2, SHAPE_2D, id="2d"), pytest.param(3, SHAPE_3D, id="3d")]
SEEDS = range(8)


@functools.lru_cache(maxsize=None)
def _cases(dimensions, shape):
    """Eight phantoms per geometry, generated once for all the tests that only read them."""
    return [phantom_case(dimensions, shape, seed) for seed in SEEDS]


def _best_threshold_dice(image, label):
    """The best Dice any single global threshold (either polarity) reaches against the label."""
    truth = label.astype(bool)
    best = 0.0
    for threshold in np.linspace(image.min(), image.max(), 201):
        for predicted in (image > threshold, image < threshold):
            dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
            best = max(best, dice)
    return best


def _tissue_block_spread(image, label, blocks=4):
    """Max/min ratio of mean body-tissue intensity over a grid of blocks: large when the image is shaded."""
    organ_level = np.median(image[label > 0])
    tissue = (label == 0) & (image > 0.12) & (image < 0.75 * organ_level)  # not background, organ or rim
    tissue = ndimage.binary_erosion(tissue)
    means = []
    for block in np.ndindex(*(blocks,) * image.ndim):
        region = tuple(slice(i * n // blocks, (i + 1) * n // blocks) for i, n in zip(block, image.shape))
        if tissue[region].mean() > 0.2:
            means.append(image[region][tissue[region]].mean())
    return max(means) / min(means)


# ----------------------------------------------------------------------------------------------------------
# phantom_case
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dimensions, shape", [(2, (64, 96)), (2, SHAPE_2D), (3, (24, 32, 40)), (3, SHAPE_3D)])
def test_phantom_shapes_and_dtypes(dimensions, shape):
    image, label = phantom_case(dimensions, shape, seed=3)
    assert image.shape == shape and label.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert -0.1 < image.min() and image.max() < 1.6  # roughly [0, 1], noise allowed


@pytest.mark.parametrize("dimensions, shape", GEOMETRIES)
def test_phantom_is_deterministic_in_seed(dimensions, shape):
    image, label = phantom_case(dimensions, shape, seed=11)
    again_image, again_label = phantom_case(dimensions, shape, seed=11)
    other_image, other_label = phantom_case(dimensions, shape, seed=12)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(label, other_label)


@pytest.mark.parametrize("dimensions, shape", GEOMETRIES)
def test_label_is_binary_single_organ_of_sensible_size(dimensions, shape):
    for _, label in _cases(dimensions, shape):
        assert set(np.unique(label)) == {0, 1}
        assert 0.02 <= label.mean() <= 0.40
        assert ndimage.label(label)[1] == 1


@pytest.mark.parametrize("dimensions, shape", GEOMETRIES)
def test_organs_vary_in_size_and_position(dimensions, shape):
    labels = [label for _, label in _cases(dimensions, shape)]
    sizes = np.array([label.sum() for label in labels], dtype=float)
    centroids = np.array([ndimage.center_of_mass(label) for label in labels])
    assert sizes.max() / sizes.min() > 2.0
    pairwise = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert pairwise[np.triu_indices(len(labels), k=1)].min() > 1.0
    assert centroids.std(axis=0).min() > 0.03 * min(shape)


@pytest.mark.parametrize("dimensions, shape", GEOMETRIES)
def test_organ_is_visible_but_not_thresholdable(dimensions, shape):
    """The organ stands out from its surroundings, yet no global threshold segments it."""
    dices = []
    for image, label in _cases(dimensions, shape):
        organ = label.astype(bool)
        surroundings = ndimage.binary_dilation(organ, iterations=3) & ~organ
        assert image[organ].mean() > image[surroundings].mean() + 0.1
        dices.append(_best_threshold_dice(image, label))
    assert max(dices) < 0.9
    assert np.mean(dices) < 0.75


@pytest.mark.parametrize("dimensions, shape", GEOMETRIES)
def test_image_has_intensity_inhomogeneity_from_the_bias_field(dimensions, shape, monkeypatch):
    shaded = [_tissue_block_spread(*case) for case in _cases(dimensions, shape)]
    monkeypatch.setattr(synthetic, "_bias_field", lambda rng, shape: np.ones(shape, dtype=np.float32))
    flat = [_tissue_block_spread(*phantom_case(dimensions, shape, seed)) for seed in SEEDS]
    assert np.median(shaded) > 1.15
    assert np.median(shaded) > np.median(flat) + 0.05


def test_background_carries_rician_noise():
    image, _ = phantom_case(2, SHAPE_2D, seed=5)
    corner = image[:6, :6]  # outside the body: pure noise magnitude, never negative
    assert corner.min() >= 0
    assert 0.01 < corner.std() < 0.1


@pytest.mark.parametrize("dimensions, shape", [(2, (32, 32, 32)), (3, (32, 32)), (4, (8, 8, 8, 8))])
def test_phantom_rejects_mismatched_geometry(dimensions, shape):
    with pytest.raises(ValueError):
        phantom_case(dimensions, shape, seed=0)


# ----------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------


def test_default_home_reads_the_environment_at_call_time(medtransfer_home, monkeypatch, tmp_path):
    assert default_home() == medtransfer_home
    monkeypatch.setenv("MEDTRANSFER_HOME", str(tmp_path / "elsewhere"))
    assert default_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("MEDTRANSFER_HOME")
    assert default_home() == Path.home() / ".cache" / "medtransfer"


def test_synthetic_dataset_root_names_every_parameter(medtransfer_home):
    root = synthetic_dataset_root(3, 12, (48, 40, 32), seed=7)
    assert root == medtransfer_home / f"synthetic_3d_v{SYNTHETIC_VERSION}_n12_48x40x32_s7"


def test_case_names():
    assert case_names(3) == ["case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    assert case_names(0) == []


# ----------------------------------------------------------------------------------------------------------
# ensure_synthetic_dataset
# ----------------------------------------------------------------------------------------------------------


def _mtimes(root):
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")}


def _leftovers(root):
    return [path for path in root.parent.iterdir() if path != root]


@pytest.mark.parametrize("dimensions, shape", [(2, (40, 48)), (3, (24, 20, 16))])
def test_ensure_writes_nifti_cases_under_medtransfer_home(dimensions, shape, medtransfer_home, caplog):
    with caplog.at_level(logging.INFO, logger="medtransfer.data"):
        root = ensure_synthetic_dataset(dimensions, 3, shape, seed=2)

    assert root == synthetic_dataset_root(dimensions, 3, shape, seed=2)
    assert root.parent == medtransfer_home
    logged = [record.getMessage() for record in caplog.records if record.name == "medtransfer.data"]
    assert len(logged) == 1 and str(root) in logged[0]
    for folder in ("images", "labels"):
        assert sorted(p.name for p in (root / folder).iterdir()) == case_names(3)
    for i, name in enumerate(case_names(3)):
        image = nib.load(root / "images" / name)
        label = nib.load(root / "labels" / name)
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.shape == shape and label.shape == shape
        np.testing.assert_array_equal(image.affine, np.eye(4))
        expected_image, expected_label = phantom_case(dimensions, shape, seed=2 * 100003 + i)
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), expected_image)
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), expected_label)
    marker = json.loads((root / "COMPLETE").read_text())
    assert marker["version"] == SYNTHETIC_VERSION
    assert (marker["dimensions"], marker["num_cases"], marker["shape"], marker["seed"]) == (
        dimensions, 3, list(shape), 2,
    )
    assert _leftovers(root) == []


def test_ensure_is_idempotent(medtransfer_home, caplog):
    root = ensure_synthetic_dataset(2, 2, (32, 32))
    before = _mtimes(root)
    caplog.clear()  # the first call's own "Generating" record (an earlier in-process bundle run may set INFO)
    with caplog.at_level(logging.INFO, logger="medtransfer.data"):
        assert ensure_synthetic_dataset(2, 2, (32, 32)) == root
    assert _mtimes(root) == before
    assert caplog.records == []


def test_ensure_regenerates_an_incomplete_folder(medtransfer_home):
    root = synthetic_dataset_root(2, 2, (32, 32), seed=0)
    (root / "images").mkdir(parents=True)
    (root / "images" / "case_000.nii.gz").write_bytes(b"truncated")

    assert ensure_synthetic_dataset(2, 2, (32, 32)) == root
    assert (root / "COMPLETE").is_file()
    assert sorted(p.name for p in (root / "images").iterdir()) == case_names(2)
    assert nib.load(root / "images" / "case_000.nii.gz").shape == (32, 32)
    assert _leftovers(root) == []


def test_ensure_honours_an_explicit_root(medtransfer_home, tmp_path):
    root = tmp_path / "custom" / "phantoms"
    assert ensure_synthetic_dataset(3, 1, (16, 16, 16), seed=1, root=root) == root
    assert (root / "COMPLETE").is_file()
    assert not medtransfer_home.exists()


def test_ensure_keeps_the_copy_of_a_process_that_won_the_race(medtransfer_home, monkeypatch):
    """Another process publishing first, while we generate, wins; our staging copy is thrown away."""
    root = synthetic_dataset_root(2, 1, (32, 32), seed=0)
    write_cases = synthetic._write_cases

    def write_cases_while_a_rival_publishes(folder, *args):
        write_cases(folder, *args)
        rival = root.with_name("rival")
        write_cases(rival, *args)
        (rival / "COMPLETE").write_text(json.dumps(synthetic._generation_parameters(2, 1, (32, 32), 0)))
        (rival / "rival_was_here").touch()
        rival.rename(root)

    monkeypatch.setattr(synthetic, "_write_cases", write_cases_while_a_rival_publishes)
    assert ensure_synthetic_dataset(2, 1, (32, 32)) == root
    assert (root / "rival_was_here").is_file()
    assert _leftovers(root) == []


def test_concurrent_callers_agree_on_one_copy(medtransfer_home):
    barrier = threading.Barrier(4)
    roots = []

    def call():
        barrier.wait()
        roots.append(ensure_synthetic_dataset(2, 2, (32, 32), seed=4))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    root = synthetic_dataset_root(2, 2, (32, 32), seed=4)
    assert roots == [root] * 4
    assert (root / "COMPLETE").is_file()
    assert sorted(p.name for p in (root / "labels").iterdir()) == case_names(2)
    assert _leftovers(root) == []


@pytest.mark.parametrize("arguments", [(3, 2, (32, 32)), (2, 0, (32, 32)), (2, 2, (32, 32), -1)])
def test_ensure_rejects_bad_arguments(arguments, medtransfer_home):
    with pytest.raises(ValueError):
        ensure_synthetic_dataset(*arguments)
