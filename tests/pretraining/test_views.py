import numpy as np
import pytest
import torch

from medtransfer.pretraining.views import RandResizedCropd, two_views
from monai.transforms import Compose


@pytest.mark.parametrize("size", [(32, 32), (16, 16, 16)])
def test_random_resized_crop_keeps_the_patch_size_and_varies_the_content(size):
    image = torch.arange(float(np.prod([2 * s for s in size]))).reshape(1, *[2 * s for s in size])
    crop = RandResizedCropd(keys="image", size=size)
    crop.set_random_state(0)
    outs = [crop({"image": image})["image"] for _ in range(5)]
    assert all(tuple(o.shape) == (1, *size) for o in outs)
    # different crops (share of area, aspect and place) give different views
    assert len({round(float(o.mean()), 3) for o in outs}) == 5


def test_crop_area_share_follows_the_range():
    crop = RandResizedCropd(keys="image", size=(32, 32), area=(0.25, 0.25), aspect=(1.0, 1.0))
    crop.set_random_state(1)
    box = crop._box((100, 100))
    assert [s.stop - s.start for s in box] == [50, 50]


def test_two_views_have_conrec_strength():
    torch.manual_seed(0)
    image = torch.rand(1, 64, 64) * 0.5 + 0.25
    chain = Compose(two_views((32, 32)))
    chain.set_random_state(3)
    means = []
    for _ in range(20):
        out = chain({"image": image.clone()})
        assert tuple(out["view_1"].shape) == (1, 32, 32) and tuple(out["input_2"].shape) == (1, 32, 32)
        assert float(out["view_1"].min()) >= 0 and float(out["view_1"].max()) <= 1
        means.append(float(out["view_1"].mean()))
    # brightness ×(1 ± 0.8): view means spread far wider than the old ±20 % jitter could give
    assert max(means) - min(means) > 0.25
