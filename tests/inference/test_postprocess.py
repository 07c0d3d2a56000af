"""Connected-component post-processing, the nnU-Net rule that chooses it, and the training handler that learns it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medtransfer.data import eval_transforms
from medtransfer.handlers.postprocess import LearnPostprocessing
from medtransfer.inference.postprocess import (
    KEEP_LARGEST, NONE, REMOVE_SMALL, PostprocessError, PostprocessMaskd, apply_postprocessing, check_postprocessing,
    choose_postprocessing, keep_largest_component, remove_small_components,
)
from medtransfer.inference.transforms import inference_postprocessing


def _blobs_2d():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:25, 5:25] = 1  # 400 pixels
    mask[30:33, 30:33] = 1  # 9 pixels
    mask[35, 2] = 1  # 1 pixel
    return mask


def test_keep_largest_uses_full_connectivity():
    mask = _blobs_2d()
    mask[25, 25] = 1  # touches the big square only diagonally: still the same component
    kept = keep_largest_component(mask)
    assert kept.dtype == np.uint8 and kept.sum() == 401
    assert keep_largest_component(np.zeros((4, 4), np.uint8)).sum() == 0


def test_remove_small_counts_physical_size_2d_and_3d():
    mask = _blobs_2d()
    assert remove_small_components(mask, 5).sum() == 409  # 1-pixel blob gone at 1 mm pixels
    # 2 x 2 mm pixels: the 9-pixel blob is 36 mm^2, the single pixel 4 mm^2
    assert remove_small_components(mask, 37, spacing=[2, 2]).sum() == 400
    assert remove_small_components(mask, 36, spacing=[2, 2]).sum() == 409
    volume = np.zeros((10, 10, 10), np.uint8)
    volume[:4, :4, :4] = 1  # 64 voxels
    volume[8, 8, 8] = 1
    assert remove_small_components(volume, 3.0, spacing=[1, 1, 2.5]).sum() == 64  # 2.5 mm^3 < 3
    assert remove_small_components(volume, 2.5, spacing=[1, 1, 2.5]).sum() == 65
    with pytest.raises(PostprocessError, match="positive number"):
        remove_small_components(mask, 0)


def test_check_postprocessing_names_bad_settings():
    assert check_postprocessing(None) is None and check_postprocessing({"method": NONE}) is None
    assert check_postprocessing({"method": REMOVE_SMALL, "min_size": 3}) == {"method": REMOVE_SMALL, "min_size": 3.0}
    with pytest.raises(PostprocessError, match="run.json: unknown post-processing method 'dilate'"):
        check_postprocessing({"method": "dilate"}, "run.json")
    with pytest.raises(PostprocessError, match="needs a positive min_size, got None"):
        check_postprocessing({"method": REMOVE_SMALL})


def test_rule_applies_only_what_does_not_lower_dice():
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 5:25] = 1
    noisy = _blobs_2d()  # the true square plus two false blobs
    choice = choose_postprocessing([noisy, label.copy()], [label, label], [None, None])
    assert choice["method"] == KEEP_LARGEST
    assert choice["validation_dice"][KEEP_LARGEST] == 1.0
    assert choice["validation_dice"][NONE] == pytest.approx((2 * 400 / 810 + 1) / 2)
    # default size threshold: a tenth of the smallest label component (400 px -> 40)
    assert choice["candidates"][1] == {"method": REMOVE_SMALL, "min_size": 40.0}

    # two real objects: keeping only the largest loses one, removing tiny specks still helps
    two = np.zeros((40, 40), np.uint8)
    two[2:12, 2:12] = 1
    two[20:30, 20:30] = 1
    predicted = two.copy()
    predicted[38, 38] = 1
    choice = choose_postprocessing([predicted], [two], [[1.0, 1.0]])
    assert choice["method"] == REMOVE_SMALL and choice["min_size"] == 10.0
    assert choice["validation_dice"][KEEP_LARGEST] < choice["validation_dice"][NONE]

    # everything lowers Dice (the true object is the small one): nothing is applied
    small_true = np.zeros((40, 40), np.uint8)
    small_true[30:33, 30:33] = 1
    choice = choose_postprocessing([_blobs_2d()], [small_true], [None], min_size=50)
    assert choice["method"] == NONE
    with pytest.raises(PostprocessError, match="as many predictions"):
        choose_postprocessing([noisy], [], [])


def test_dictionary_transform_uses_the_tensor_spacing():
    mask = torch.as_tensor(_blobs_2d()[None].astype(np.float32))
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    data = {"pred": MetaTensor(mask, affine=affine)}
    out = PostprocessMaskd("pred", method=REMOVE_SMALL, min_size=37)(data)
    assert isinstance(out["pred"], MetaTensor) and torch.equal(out["pred"].affine, affine)
    assert float(out["pred"].sum()) == 400
    assert PostprocessMaskd("pred", method=None)(data)["pred"] is data["pred"]
    with pytest.raises(PostprocessError, match="unknown post-processing method"):
        PostprocessMaskd("pred", method="largest")
    # the exported inference config's chain holds the step with the learned arguments
    chain = inference_postprocessing(eval_transforms(2, with_label=False), "/tmp", postprocess={"method": KEEP_LARGEST})
    assert chain.transforms[2].spec == {"method": KEEP_LARGEST}


class _FixedLogits(torch.nn.Module):
    """Logits that predict `mask` whatever the input (a trained network stand-in)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32))

    def forward(self, image):
        fg = self.mask.expand(image.shape[0], 1, *self.mask.shape)
        return torch.cat([1 - fg, fg], dim=1)


def test_handler_learns_on_validation_cases_and_notes_the_choice(tmp_path):
    label = np.zeros((40, 40), np.float32)
    label[5:25, 5:25] = 1
    batches = [{
        "image": MetaTensor(torch.zeros(1, 1, 40, 40), affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))),
        "label": torch.as_tensor(label)[None, None],
    }] * 2
    run = SimpleNamespace(notes={}, model_path=tmp_path / "absent.pt")
    handler = LearnPostprocessing(run, _FixedLogits(_blobs_2d()), batches, inferer=lambda x, net: net(x))
    choice = handler.learn()
    assert run.notes["postprocessing"] is choice
    assert choice["method"] == KEEP_LARGEST and choice["n_cases"] == 2
    # 0.5 mm pixels: the smallest label component is 400 * 0.25 = 100 mm^2, so the threshold is 10 mm^2
    assert choice["candidates"][1]["min_size"] == 10.0
    assert apply_postprocessing(_blobs_2d(), choice).sum() == 400
