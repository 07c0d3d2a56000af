"""case_metrics: MONAI-backed Dice / HD95 / surface Dice checked against hand-computed geometry."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medtransfer.evaluation.metrics import METRIC_NAMES, case_metrics

SHAPES = {2: (48, 48), 3: (32, 32, 32)}


def box(ndim: int, start: int = 8, size: int = 12) -> np.ndarray:
    """A centred-ish box mask far enough from the border that shifts of a few voxels stay inside."""
    mask = np.zeros(SHAPES[ndim], dtype=bool)
    mask[(slice(start, start + size),) * ndim] = True
    return mask


def shifted(mask: np.ndarray, k: int, axis: int) -> np.ndarray:
    """mask moved by k voxels along axis (no wrap-around reaches the box, it is far from the border)."""
    return np.roll(mask, k, axis=axis)


def blob(seed: int, shape=(40, 40, 24)) -> np.ndarray:
    """An irregular smooth binary shape, so agreement tests are not only about boxes."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    return gaussian_filter(noise, sigma=3) > 0.05


def test_returns_all_metrics_and_volumes_as_floats():
    result = case_metrics(box(2), shifted(box(2), 1, 0))
    assert set(METRIC_NAMES) <= set(result)
    assert set(result) == {*METRIC_NAMES, "volume_pred", "volume_label"}
    assert all(type(value) is float for value in result.values())


@pytest.mark.parametrize("ndim", [2, 3])
def test_identical_masks_are_perfect(ndim):
    result = case_metrics(box(ndim), box(ndim), spacing=[0.7] * ndim)
    assert result["dice"] == pytest.approx(1.0)
    assert result["hd95"] == pytest.approx(0.0)
    assert result["surface_dice"] == pytest.approx(1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_disjoint_masks_have_zero_dice(ndim):
    pred = box(ndim, start=2, size=5)
    label = box(ndim, start=20, size=5)
    result = case_metrics(pred, label)
    assert result["dice"] == 0.0
    assert result["surface_dice"] == 0.0
    assert result["hd95"] > 0.0


def test_dice_of_known_overlap_matches_hand_computation():
    pred = np.zeros((30, 30), dtype=np.uint8)
    label = np.zeros((30, 30), dtype=np.uint8)
    pred[0:10, 0:10] = 1  # |A| = 100
    label[5:15, 0:5] = 1  # |B| = 50, |A n B| = 5 * 5 = 25
    expected = 2 * 25 / (100 + 50)
    assert case_metrics(pred, label)["dice"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("s", [0.5, 1.0, 2.5])
def test_hd95_of_shifted_mask_is_shift_times_spacing(ndim, k, s):
    for axis in range(ndim):
        label = box(ndim)
        result = case_metrics(shifted(label, k, axis), label, spacing=[s] * ndim)
        assert result["hd95"] == pytest.approx(k * s, rel=1e-5), f"axis {axis}"


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_honours_anisotropic_spacing_per_axis(ndim):
    spacing = [0.5, 1.5, 3.0][:ndim]
    label = box(ndim)
    for axis in range(ndim):
        hd95 = case_metrics(shifted(label, 2, axis), label, spacing=spacing)["hd95"]
        assert hd95 == pytest.approx(2 * spacing[axis], rel=1e-5), f"axis {axis}"


def test_volumes_are_voxel_count_times_voxel_size():
    pred, label = box(3, size=4), box(3, size=6)
    result = case_metrics(pred, label, spacing=(0.5, 2.0, 3.0))
    assert result["volume_pred"] == pytest.approx(4**3 * 3.0)
    assert result["volume_label"] == pytest.approx(6**3 * 3.0)
    assert case_metrics(box(2, size=5), box(2, size=5))["volume_pred"] == pytest.approx(25.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_surface_dice_within_and_outside_tolerance(ndim):
    label = box(ndim)
    pred = shifted(label, 1, 0)  # every boundary voxel is within 1 voxel of the other boundary
    assert case_metrics(pred, label, surface_tolerance_mm=1.0)["surface_dice"] == pytest.approx(1.0)
    assert case_metrics(pred, label, surface_tolerance_mm=0.5)["surface_dice"] < 1.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_surface_dice_tolerance_is_in_millimetres(ndim):
    label = box(ndim)
    pred = shifted(label, 1, 0)
    spacing = [2.0] + [1.0] * (ndim - 1)  # the 1-voxel shift is 2 mm
    assert case_metrics(pred, label, spacing=spacing, surface_tolerance_mm=1.0)["surface_dice"] < 1.0
    assert case_metrics(pred, label, spacing=spacing, surface_tolerance_mm=2.0)["surface_dice"] == pytest.approx(1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_both_empty_is_a_perfect_prediction(ndim):
    empty = np.zeros(SHAPES[ndim], dtype=bool)
    result = case_metrics(empty, empty, spacing=[2.0] * ndim)
    assert result == {"dice": 1.0, "hd95": 0.0, "surface_dice": 1.0, "volume_pred": 0.0, "volume_label": 0.0}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("empty_side", ["pred", "label"])
def test_exactly_one_empty_gives_zero_scores_and_worst_case_hd95(ndim, empty_side):
    empty, full = np.zeros(SHAPES[ndim], dtype=bool), box(ndim, size=4)
    pred, label = (empty, full) if empty_side == "pred" else (full, empty)
    result = case_metrics(pred, label)
    assert result["dice"] == 0.0
    assert result["surface_dice"] == 0.0
    assert result["hd95"] == pytest.approx(math.sqrt(sum(n * n for n in SHAPES[ndim])))  # the diagonal, 1 mm voxels
    spacing = [2.0, 0.5, 3.0][:ndim]
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPES[ndim], spacing)))
    assert case_metrics(pred, label, spacing=spacing)["hd95"] == pytest.approx(diagonal)
    assert result["volume_pred" if empty_side == "label" else "volume_label"] == pytest.approx(4.0**ndim)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(48, 48\) vs label \(48, 47\)"):
        case_metrics(np.zeros((48, 48)), np.zeros((48, 47)))


@pytest.mark.parametrize("bad", [2, 0.5, -1, float("nan")])
@pytest.mark.parametrize("side", ["pred", "label"])
def test_non_binary_values_are_rejected(bad, side):
    good, wrong = box(2).astype(float), box(2).astype(float)
    wrong[0, 0] = bad
    pred, label = (wrong, good) if side == "pred" else (good, wrong)
    with pytest.raises(ValueError, match=rf"{side} must be binary"):
        case_metrics(pred, label)


@pytest.mark.parametrize("shape", [(10,), (2, 4, 4, 4)])
def test_only_2d_and_3d_masks_are_accepted(shape):
    with pytest.raises(ValueError, match="2D or 3D"):
        case_metrics(np.zeros(shape), np.zeros(shape))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, float("inf"), 1.0)])
def test_bad_spacing_is_rejected(spacing):
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(box(3), box(3), spacing=spacing)


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_and_numpy_inputs_agree(seed):
    pred, label = blob(seed), blob(seed + 100)
    spacing = (0.8, 1.1, 2.5)
    reference = case_metrics(pred, label, spacing=spacing)
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(label), spacing),
        (torch.from_numpy(pred).float(), label.astype(np.uint8), np.array(spacing, dtype=np.float32)),
        (pred.astype(np.int64), torch.from_numpy(label).to(torch.uint8), torch.tensor(spacing)),
    ]
    for variant_pred, variant_label, variant_spacing in variants:
        result = case_metrics(variant_pred, variant_label, spacing=variant_spacing)
        assert result == pytest.approx(reference, rel=1e-5)
    assert 0.0 < reference["dice"] < 1.0 and reference["hd95"] > 0.0


def test_non_contiguous_numpy_views_are_accepted():
    label = blob(3)
    flipped = label[::-1, :, ::2]
    reference = case_metrics(np.ascontiguousarray(flipped), np.ascontiguousarray(flipped))
    assert case_metrics(flipped, flipped) == reference


def test_volume_dice_counts_false_positives_on_empty_slices():
    from medtransfer.evaluation.metrics import volume_dice

    label = np.zeros((4, 10, 10), bool)
    label[1:3, 2:6, 2:6] = True
    pred = label.copy()
    pred[0, 7:9, 7:9] = True  # a false positive on a slice without foreground
    pred[2, 2:6, 2] = False
    slices = [case_metrics(p, l, spacing=[0.5, 2.0]) for p, l in zip(pred, label)]
    assert volume_dice(slices) == pytest.approx(case_metrics(pred, label)["dice"], rel=1e-6)
    with_foreground = [r for r in slices if r["volume_label"] > 0]
    assert volume_dice(with_foreground) > volume_dice(slices)  # dropping empty slices hides the false positive
    empty = case_metrics(np.zeros((5, 5), bool), np.zeros((5, 5), bool))
    assert volume_dice([empty, empty]) == 1.0
