"""Image corruptions for restoration-based self-supervised pretraining.

The four corruptions of Models Genesis (Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical
Image Analysis", MICCAI 2019; extended in Medical Image Analysis 67, 2021), written from the papers' descriptions:
a network is trained to restore the original image from a corrupted one. Dippel et al.'s ConRec ("contrastive +
multi-reconstruction") feeds each view through one randomly chosen corruption, which is what
:class:`RandCorruptiond` provides.

All transforms are MONAI randomizable dictionary transforms for channel-first images, ``(C, H, W)`` or
``(C, D, H, W)``, with intensities scaled to ``[0, 1]``. They accept numpy arrays and torch tensors (MetaTensor
metadata is kept) and return the input's type on the input's device; the work is done on a numpy copy, so the
input is never modified in place. Integer inputs come back as float32, since the corruptions create non-integer
values.

Randomness comes only from ``self.R``: ``set_random_state(seed)`` makes a transform reproducible, and a transform
created after :func:`monai.utils.set_determinism` is seeded from it (as MONAI's ``Compose`` seeds its members).
Per call, one set of parameters (blocks, boxes, curve) is drawn from the spatial shape of the first key present and
used for every key, so all keys must share that spatial shape; the random noise of in-/out-painting is drawn per key.
The parameters of the last call are exposed as ``last_*`` attributes (empty/``None`` when the call applied nothing).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import MAX_SEED, convert_to_dst_type, convert_to_numpy, get_seed

__all__ = [
    "Box",
    "RandCorruptiond",
    "RandInPaintingd",
    "RandLocalPixelShufflingd",
    "RandNonLinearIntensityd",
    "RandOutPaintingd",
    "bezier_intensity_map",
    "boxes_to_mask",
]

Box = tuple[slice, ...]
"""A box in an image's spatial axes: one ``slice(start, stop)`` per spatial axis (channel axis excluded)."""

BEZIER_SAMPLES = 1024
"""Number of curve parameters ``t`` at which the Bézier curve is sampled before interpolating."""


def boxes_to_mask(spatial_shape: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    """Boolean mask of ``spatial_shape``, True inside the union of ``boxes``."""
    mask = np.zeros(tuple(spatial_shape), dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


def bezier_intensity_map(values: Any, control_points: np.ndarray, inverted: bool = False) -> np.ndarray:
    """Map intensities through the cubic Bézier curve with end points (0, 0), (1, 1) and two control points.

    The curve ``B(t) = (1-t)^3 P0 + 3(1-t)^2 t P1 + 3(1-t) t^2 P2 + t^3 P3`` is sampled at ``BEZIER_SAMPLES``
    values of ``t`` and the intensity mapping ``y(x)`` is read off by linear interpolation (``np.interp`` over the
    sampled ``x``, sorted). With both control points in ``[0, 1]^2`` the coordinates ``x(t)`` and ``y(t)`` are
    non-decreasing in ``t`` (the derivative is a quadratic Bernstein polynomial with coefficients ``a = p1``,
    ``b = p2 - p1``, ``c = 1 - p2``, and ``b >= -sqrt(ac)`` holds on the unit square), so the mapping is monotone
    non-decreasing, continuous, and sends 0 to 0 and 1 to 1: it maps ``[0, 1]`` onto ``[0, 1]``.

    Args:
        values: intensities (array-like); values outside ``[0, 1]`` are clamped to the curve's end values.
        control_points: array of shape ``(2, 2)``, rows ``P1`` and ``P2``, columns ``(x, y)``, entries in ``[0, 1]``.
        inverted: return ``1 - y(x)`` instead, the decreasing curve (maps 0 to 1 and 1 to 0).

    Returns:
        float64 numpy array with the shape of ``values``.
    """
    points = np.asarray(control_points, dtype=np.float64)
    if points.shape != (2, 2) or points.min() < 0.0 or points.max() > 1.0:
        raise ValueError(f"control_points must be a (2, 2) array in [0, 1], got {points!r}")
    t = np.linspace(0.0, 1.0, BEZIER_SAMPLES)[:, None]
    curve = 3 * (1 - t) ** 2 * t * points[0] + 3 * (1 - t) * t**2 * points[1] + t**3  # P0 = (0, 0), P3 = (1, 1)
    order = np.argsort(curve[:, 0], kind="stable")
    mapped = np.interp(np.asarray(values, dtype=np.float64), curve[order, 0], curve[order, 1])
    return 1.0 - mapped if inverted else mapped


def _as_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int ``n`` or an inclusive ``(low, high)`` pair, as ``(low, high)`` with ``1 <= low <= high``."""
    low, high = (value, value) if np.isscalar(value) else tuple(value)
    if not 1 <= low <= high:
        raise ValueError(f"{name} must be a positive int or a (low, high) pair with 1 <= low <= high, got {value!r}")
    return int(low), int(high)


def _as_fraction_range(value: Sequence[float], name: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"{name} must be a (low, high) pair with 0 < low <= high <= 1, got {value!r}")
    return low, high


class _Corruptiond(RandomizableTransform, MapTransform):
    """Shared machinery: draw parameters once per call from the first key's spatial shape, corrupt every key.

    Subclasses implement ``_draw``, ``_clear`` and ``_corrupt``.
    """

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.set_random_state(seed=get_seed())
        self._spatial_shape: tuple[int, ...] | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        super().randomize(None)
        self._spatial_shape = tuple(int(s) for s in spatial_shape)
        if self._do_transform:
            self._draw(self._spatial_shape)
        else:
            self._clear()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first_key = self.first_key(d)
        if first_key == []:
            return d
        first = d[first_key]
        if first.ndim < 2:
            raise ValueError(f"expected a channel-first image (C, *spatial), got shape {tuple(first.shape)}")
        self.randomize(first.shape[1:])
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key])
        return d

    def _apply(self, img: Any) -> Any:
        if tuple(img.shape[1:]) != self._spatial_shape:
            raise ValueError(f"all keys must share the spatial shape {self._spatial_shape}, got {tuple(img.shape)}")
        image = convert_to_numpy(img)
        image = image.astype(image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32, copy=True)
        out = self._corrupt(image)
        return convert_to_dst_type(out, dst=img, dtype=out.dtype)[0]

    @abstractmethod
    def _draw(self, spatial_shape: tuple[int, ...]) -> None:
        """Draw this call's parameters and store them in the ``last_*`` attributes."""

    @abstractmethod
    def _clear(self) -> None:
        """Reset the ``last_*`` attributes after a call that applies nothing."""

    @abstractmethod
    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        """Corrupt a float numpy copy of shape ``(C, *spatial_shape)`` (in place or not) and return it."""

    def _draw_boxes(
        self, spatial_shape: tuple[int, ...], count: tuple[int, int], fraction: tuple[float, float]
    ) -> list[Box]:
        """``count`` boxes (inclusive range), each axis sized in ``fraction`` of that axis, placed within bounds."""
        boxes: list[Box] = []
        for _ in range(self.R.randint(count[0], count[1] + 1)):
            box = []
            for size_max in spatial_shape:
                low = min(size_max, max(1, round(fraction[0] * size_max)))
                high = min(size_max, max(low, round(fraction[1] * size_max)))
                size = self.R.randint(low, high + 1)
                start = self.R.randint(0, size_max - size + 1)
                box.append(slice(start, start + size))
            boxes.append(tuple(box))
        return boxes

    def _fill_with_noise(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Replace ``image[:, mask]`` by uniform noise in ``[0, 1)``, independently per voxel and channel."""
        image[:, mask] = self.R.uniform(0.0, 1.0, size=(image.shape[0], int(mask.sum())))
        return image


class RandLocalPixelShufflingd(_Corruptiond):
    """Local pixel shuffling (Models Genesis): shuffle the voxels inside many small random windows.

    The paper samples windows smaller than the network's receptive field and randomly permutes the voxels inside each,
    so global structure survives while local texture is destroyed. Here ``num_blocks`` candidate windows are drawn,
    each with a per-axis size uniform in ``[1, max_block_size]`` (capped by the image) at a uniform position inside
    the image; a candidate overlapping an already accepted window is dropped, so the accepted windows are disjoint and
    each window's multiset of values is exactly preserved. Within a window the same spatial permutation is applied to
    every channel (and every key).

    Args:
        keys: keys of the images to corrupt.
        prob: probability of corrupting at all.
        num_blocks: number of candidate windows drawn per call.
        max_block_size: largest window extent, one int for all spatial axes or one per axis.
        allow_missing_keys: don't raise for keys missing from the data.

    Attributes:
        last_blocks: the accepted windows of the last call, as :data:`Box` tuples of spatial slices.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        num_blocks: int = 1000,
        max_block_size: int | Sequence[int] = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        sizes = np.atleast_1d(max_block_size)
        if sizes.ndim != 1 or (sizes < 1).any():
            raise ValueError(f"max_block_size must be a positive int or a sequence of them, got {max_block_size!r}")
        self.num_blocks = int(num_blocks)
        self.max_block_size = tuple(int(s) for s in sizes)
        self.last_blocks: list[Box] = []
        self._permutations: list[np.ndarray] = []

    def _draw(self, spatial_shape: tuple[int, ...]) -> None:
        if len(self.max_block_size) not in (1, len(spatial_shape)):
            raise ValueError(f"max_block_size {self.max_block_size} does not match spatial shape {spatial_shape}")
        max_sizes = np.broadcast_to(self.max_block_size, (len(spatial_shape),))
        taken = np.zeros(spatial_shape, dtype=bool)
        self.last_blocks, self._permutations = [], []
        for _ in range(self.num_blocks):
            block = []
            for size_max, block_max in zip(spatial_shape, max_sizes):
                size = self.R.randint(1, min(block_max, size_max) + 1)
                start = self.R.randint(0, size_max - size + 1)
                block.append(slice(start, start + size))
            block = tuple(block)
            if taken[block].any():
                continue
            taken[block] = True
            self.last_blocks.append(block)
            self._permutations.append(self.R.permutation(taken[block].size))

    def _clear(self) -> None:
        self.last_blocks, self._permutations = [], []

    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        channels = image.shape[0]
        for block, permutation in zip(self.last_blocks, self._permutations):
            window = image[(slice(None), *block)]
            image[(slice(None), *block)] = window.reshape(channels, -1)[:, permutation].reshape(window.shape)
        return image


class RandNonLinearIntensityd(_Corruptiond):
    """Non-linear intensity transformation (Models Genesis): a random monotone Bézier curve applied to intensities.

    The paper maps every intensity through a smooth, monotone cubic Bézier curve with end points (0, 0) and (1, 1)
    and two random control points, so that the network must learn absolute intensity values (e.g. Hounsfield-unit
    ranges) to undo it; it also uses the decreasing counterpart. Here both control points are uniform in
    ``[0, 1]^2`` (which makes the curve monotone, see :func:`bezier_intensity_map`) and, when ``allow_inversion``,
    the decreasing curve ``1 - y(x)`` is used with probability 0.5. Values outside ``[0, 1]`` are clamped.

    Args:
        keys: keys of the images to corrupt.
        prob: probability of corrupting at all.
        allow_inversion: with probability 0.5 use the decreasing curve ``1 - y(x)`` (as in the paper).
        allow_missing_keys: don't raise for keys missing from the data.

    Attributes:
        last_control_points: ``(2, 2)`` array (rows P1, P2; columns x, y) of the last call, or ``None``.
        last_inverted: whether the last call used the decreasing curve.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        allow_inversion: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.allow_inversion = allow_inversion
        self.last_control_points: np.ndarray | None = None
        self.last_inverted = False

    def _draw(self, spatial_shape: tuple[int, ...]) -> None:
        self.last_control_points = self.R.uniform(0.0, 1.0, size=(2, 2))
        self.last_inverted = bool(self.allow_inversion and self.R.rand() < 0.5)

    def _clear(self) -> None:
        self.last_control_points, self.last_inverted = None, False

    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        mapped = bezier_intensity_map(image, self.last_control_points, self.last_inverted)
        return mapped.astype(image.dtype, copy=False)


class RandInPaintingd(_Corruptiond):
    """In-painting (Models Genesis): replace a few random boxes by random noise; the network must fill them in.

    The paper hides several windows of random size and aspect ratio, superimposed into one region of complex shape,
    and keeps everything outside unchanged. Here ``num_holes`` boxes are drawn, each axis sized in
    ``hole_size_fraction`` of the image along that axis, and their union is replaced by uniform noise in ``[0, 1)``.

    Args:
        keys: keys of the images to corrupt.
        prob: probability of corrupting at all.
        num_holes: number of boxes, an int or an inclusive ``(low, high)`` range.
        hole_size_fraction: ``(low, high)`` range of each box's extent as a fraction of the image along each axis.
        allow_missing_keys: don't raise for keys missing from the data.

    Attributes:
        last_boxes: the boxes of the last call, as :data:`Box` tuples of spatial slices.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        num_holes: int | Sequence[int] = (1, 5),
        hole_size_fraction: Sequence[float] = (1 / 8, 1 / 4),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.num_holes = _as_range(num_holes, "num_holes")
        self.hole_size_fraction = _as_fraction_range(hole_size_fraction, "hole_size_fraction")
        self.last_boxes: list[Box] = []

    def _draw(self, spatial_shape: tuple[int, ...]) -> None:
        self.last_boxes = self._draw_boxes(spatial_shape, self.num_holes, self.hole_size_fraction)

    def _clear(self) -> None:
        self.last_boxes = []

    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        return self._fill_with_noise(image, boxes_to_mask(image.shape[1:], self.last_boxes))


class RandOutPaintingd(_Corruptiond):
    """Out-painting (Models Genesis): keep a few random inner boxes, replace everything else by random noise.

    The paper's counterpart of in-painting: the union of a few windows of random size and aspect ratio is kept and
    the surroundings are hidden, so the network must extrapolate outwards. Here ``num_boxes`` boxes are drawn, each
    axis sized in ``box_size_fraction`` of the image along that axis, and every voxel outside their union is replaced
    by uniform noise in ``[0, 1)``.

    Args:
        keys: keys of the images to corrupt.
        prob: probability of corrupting at all.
        num_boxes: number of kept boxes, an int or an inclusive ``(low, high)`` range.
        box_size_fraction: ``(low, high)`` range of each box's extent as a fraction of the image along each axis.
        allow_missing_keys: don't raise for keys missing from the data.

    Attributes:
        last_boxes: the kept boxes of the last call, as :data:`Box` tuples of spatial slices.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        num_boxes: int | Sequence[int] = (1, 5),
        box_size_fraction: Sequence[float] = (3 / 8, 5 / 8),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.num_boxes = _as_range(num_boxes, "num_boxes")
        self.box_size_fraction = _as_fraction_range(box_size_fraction, "box_size_fraction")
        self.last_boxes: list[Box] = []

    def _draw(self, spatial_shape: tuple[int, ...]) -> None:
        self.last_boxes = self._draw_boxes(spatial_shape, self.num_boxes, self.box_size_fraction)

    def _clear(self) -> None:
        self.last_boxes = []

    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        return self._fill_with_noise(image, ~boxes_to_mask(image.shape[1:], self.last_boxes))


class RandCorruptiond(RandomizableTransform, MapTransform):
    """Apply ONE corruption chosen uniformly at random from a list (ConRec's "one random corruption per view").

    Args:
        keys: keys of the images to corrupt; used only to build the default corruptions.
        corruptions: the candidate transforms (callables on the data dictionary, with their own keys); by default
            the four Models Genesis corruptions with their default settings and ``prob=1``, in the order
            local pixel shuffling, non-linear intensity, in-painting, out-painting.
        prob: probability of applying a corruption at all.
        allow_missing_keys: passed to the default corruptions.

    Attributes:
        last_index: index in ``corruptions`` of the transform applied by the last call, or ``None``.
        last_choice: class name of that transform (e.g. ``"RandInPaintingd"``), or ``None``.

    ``set_random_state`` also reseeds the candidate transforms (from this transform's generator), so one seed fixes
    both the choice and the chosen corruption's parameters.
    """

    def __init__(
        self,
        keys: KeysCollection,
        corruptions: Sequence[Any] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        if corruptions is None:
            corruptions = [
                RandLocalPixelShufflingd(keys, allow_missing_keys=allow_missing_keys),
                RandNonLinearIntensityd(keys, allow_missing_keys=allow_missing_keys),
                RandInPaintingd(keys, allow_missing_keys=allow_missing_keys),
                RandOutPaintingd(keys, allow_missing_keys=allow_missing_keys),
            ]
        if not corruptions:
            raise ValueError("corruptions must not be empty")
        self.corruptions = list(corruptions)
        self.last_index: int | None = None
        self.set_random_state(seed=get_seed())

    @property
    def last_choice(self) -> str | None:
        return None if self.last_index is None else type(self.corruptions[self.last_index]).__name__

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandCorruptiond:
        super().set_random_state(seed=seed, state=state)
        for corruption in self.corruptions:
            if isinstance(corruption, Randomizable):
                corruption.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.last_index = int(self.R.randint(len(self.corruptions))) if self._do_transform else None

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        self.randomize()
        if self.last_index is None:
            return dict(data)
        return self.corruptions[self.last_index](data)
