"""Property tests of the Models Genesis corruptions in medtransfer.pretraining.corruptions."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import set_determinism

from medtransfer.pretraining.corruptions import (
    RandCorruptiond,
    RandInPaintingd,
    RandLocalPixelShufflingd,
    RandNonLinearIntensityd,
    RandOutPaintingd,
    bezier_intensity_map,
    boxes_to_mask,
)

SHAPES = {"2d": (2, 40, 48), "3d": (1, 20, 24, 16)}
ALL_TRANSFORMS = [RandLocalPixelShufflingd, RandNonLinearIntensityd, RandInPaintingd, RandOutPaintingd, RandCorruptiond]


def _image(shape, seed=0):
    """Distinct values (a permutation of a ramp) so that any moved voxel is visible."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.linspace(0.0, 1.0, int(np.prod(shape)), dtype=np.float32)).reshape(shape)


def _run(transform, image, seed):
    transform.set_random_state(seed)
    return transform({"img": image})["img"]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_local_shuffling_permutes_within_blocks_only(shape):
    image = _image(shape)
    transform = RandLocalPixelShufflingd("img", num_blocks=200, max_block_size=5)
    out = _run(transform, image, seed=1)

    assert transform.last_blocks, "no block was drawn"
    assert not np.array_equal(out, image)
    for block in transform.last_blocks:
        region = (slice(None), *block)
        assert all(0 <= s.start < s.stop <= n and s.stop - s.start <= 5 for s, n in zip(block, shape[1:]))
        np.testing.assert_array_equal(np.sort(out[region], axis=None), np.sort(image[region], axis=None))
    outside = ~boxes_to_mask(shape[1:], transform.last_blocks)
    np.testing.assert_array_equal(out[:, outside], image[:, outside])


def test_local_shuffling_blocks_are_disjoint():
    transform = RandLocalPixelShufflingd("img", num_blocks=300, max_block_size=6)
    _run(transform, _image(SHAPES["3d"]), seed=2)
    coverage = sum(boxes_to_mask(SHAPES["3d"][1:], [block]).astype(int) for block in transform.last_blocks)
    assert coverage.max() == 1


@pytest.mark.parametrize("inverted", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_bezier_curve_is_monotone_onto_unit_interval(seed, inverted):
    control_points = np.random.default_rng(seed).uniform(size=(2, 2))
    y = bezier_intensity_map(np.linspace(0.0, 1.0, 1001), control_points, inverted=inverted)

    assert y.min() >= 0.0 and y.max() <= 1.0
    steps = np.diff(y)
    assert (steps <= 1e-12).all() if inverted else (steps >= -1e-12).all()
    assert (y[0], y[-1]) == pytest.approx((1.0, 0.0) if inverted else (0.0, 1.0), abs=1e-12)


def test_bezier_curve_monotone_at_extreme_control_points():
    control_points = np.array([[1.0, 0.0], [0.0, 1.0]])  # x'(t) touches 0 at t = 1/2
    y = bezier_intensity_map(np.linspace(0.0, 1.0, 1001), control_points)
    assert (np.diff(y) >= -1e-12).all() and (y[0], y[-1]) == pytest.approx((0.0, 1.0))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_non_linear_intensity_applies_the_drawn_curve(shape):
    image = _image(shape)
    transform = RandNonLinearIntensityd("img")
    inverted_seen = set()
    for seed in range(12):
        out = _run(transform, image, seed)
        expected = bezier_intensity_map(image, transform.last_control_points, transform.last_inverted)
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert out.min() >= 0.0 and out.max() <= 1.0
        order = np.argsort(image, axis=None)
        steps = np.diff(out.ravel()[order])
        assert (steps <= 1e-6).all() if transform.last_inverted else (steps >= -1e-6).all()
        inverted_seen.add(transform.last_inverted)
    assert inverted_seen == {False, True}


def test_non_linear_intensity_without_inversion_is_increasing():
    transform = RandNonLinearIntensityd("img", allow_inversion=False)
    for seed in range(20):
        _run(transform, _image(SHAPES["2d"]), seed)
        assert transform.last_inverted is False


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_in_painting_changes_only_inside_boxes(shape):
    image = _image(shape)
    transform = RandInPaintingd("img", num_holes=(2, 4), hole_size_fraction=(0.2, 0.4))
    out = _run(transform, image, seed=3)

    assert 2 <= len(transform.last_boxes) <= 4
    inside = boxes_to_mask(shape[1:], transform.last_boxes)
    np.testing.assert_array_equal(out[:, ~inside], image[:, ~inside])
    assert (out[:, inside] != image[:, inside]).mean() > 0.99  # replaced by noise
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_out_painting_keeps_only_inner_boxes(shape):
    image = _image(shape)
    transform = RandOutPaintingd("img", num_boxes=(1, 3))
    out = _run(transform, image, seed=4)

    assert 1 <= len(transform.last_boxes) <= 3
    kept = boxes_to_mask(shape[1:], transform.last_boxes)
    np.testing.assert_array_equal(out[:, kept], image[:, kept])
    assert (out[:, ~kept] != image[:, ~kept]).mean() > 0.99
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("transform_cls", ALL_TRANSFORMS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_same_seed_same_output_different_seed_differs(transform_cls, shape):
    image = _image(shape)
    transform = transform_cls("img")
    first, again = _run(transform, image, 7), _run(transform, image, 7)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, _run(transform_cls("img"), image, 7))  # a fresh instance too
    assert not np.array_equal(first, _run(transform, image, 8))


@pytest.mark.parametrize("transform_cls", ALL_TRANSFORMS)
def test_set_determinism_makes_new_transforms_reproducible(transform_cls):
    image = _image(SHAPES["2d"])
    try:
        outputs = []
        for _ in range(2):
            set_determinism(seed=11)
            outputs.append(transform_cls("img")({"img": image})["img"])
    finally:
        set_determinism(seed=None)
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("transform_cls", ALL_TRANSFORMS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_numpy_and_torch_agree_and_keep_their_type(transform_cls, shape):
    image = _image(shape)
    transform = transform_cls("img")
    from_numpy = _run(transform, image, 5)
    from_torch = _run(transform, torch.from_numpy(image.copy()), 5)
    meta = MetaTensor(torch.from_numpy(image.copy()), meta={"filename_or_obj": "case_001.nii.gz"})
    from_meta = _run(transform, meta, 5)

    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert type(from_torch) is torch.Tensor and from_torch.dtype == torch.float32
    assert isinstance(from_meta, MetaTensor) and from_meta.meta["filename_or_obj"] == "case_001.nii.gz"
    assert from_numpy.shape == tuple(from_torch.shape) == tuple(from_meta.shape) == shape
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)
    np.testing.assert_array_equal(from_meta.numpy(), from_numpy)


@pytest.mark.parametrize("transform_cls", ALL_TRANSFORMS)
def test_input_is_not_modified(transform_cls):
    image = _image(SHAPES["3d"])
    tensor = torch.from_numpy(image.copy())
    _run(transform_cls("img"), image.copy(), 6)
    _run(transform_cls("img"), tensor, 6)
    np.testing.assert_array_equal(tensor.numpy(), image)


@pytest.mark.parametrize(
    "transform_cls", [RandLocalPixelShufflingd, RandNonLinearIntensityd, RandInPaintingd, RandOutPaintingd]
)
def test_prob_zero_leaves_data_untouched(transform_cls):
    image = _image(SHAPES["2d"])
    transform = transform_cls("img", prob=0.0)
    transform.set_random_state(0)
    out = transform({"img": image, "label": "untouched"})
    assert out["img"] is image and out["label"] == "untouched"
    np.testing.assert_array_equal(image, _image(SHAPES["2d"]))


def test_corruption_prob_zero_applies_nothing():
    image = _image(SHAPES["2d"])
    transform = RandCorruptiond("img", prob=0.0)
    assert _run(transform, image, 0) is image
    assert transform.last_index is None and transform.last_choice is None


def test_same_parameters_for_all_keys():
    image = _image(SHAPES["3d"])
    transform = RandLocalPixelShufflingd(["a", "b"])
    transform.set_random_state(9)
    out = transform({"a": image, "b": image.copy()})
    np.testing.assert_array_equal(out["a"], out["b"])
    with pytest.raises(ValueError, match="spatial shape"):
        transform({"a": image, "b": image[:, :-1]})


def test_random_corruption_picks_every_corruption():
    image = _image(SHAPES["2d"])
    transform = RandCorruptiond("img")
    chosen = set()
    for seed in range(40):
        out = _run(transform, image, seed)
        chosen.add(transform.last_choice)
        chosen_transform = transform.corruptions[transform.last_index]
        assert type(chosen_transform).__name__ == transform.last_choice
        assert not np.array_equal(out, image)
    assert chosen == {"RandLocalPixelShufflingd", "RandNonLinearIntensityd", "RandInPaintingd", "RandOutPaintingd"}


def test_random_corruption_with_custom_list():
    image = _image(SHAPES["2d"])
    transform = RandCorruptiond("img", corruptions=[RandInPaintingd("img"), RandOutPaintingd("img")])
    chosen = {(_run(transform, image, seed), transform.last_choice)[1] for seed in range(20)}
    assert chosen == {"RandInPaintingd", "RandOutPaintingd"}
    with pytest.raises(ValueError):
        RandCorruptiond("img", corruptions=[])
