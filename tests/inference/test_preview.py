"""`segment --preview`: a PNG per scan (outline over the image) and an index.html whose links all resolve."""

from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from medtransfer.inference.preview import write_preview
from medtransfer.inference.segment import SegmentError, segment
from tests.inference.test_bundle_loading import make_bundle

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("a", "img"):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if tag == "tr" and "class" in attrs:
            self.rows.append(attrs["class"])


def _red_pixels(path):
    pixels = matplotlib.image.imread(path)[..., :3]
    return int(((pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.4) & (pixels[..., 2] < 0.4)).sum())


def test_2d_preview_draws_the_outline_of_the_mask(tmp_path):
    image = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (60, 1))
    mask = np.zeros((60, 80), np.uint8)
    mask[20:40, 30:60] = 1
    path = write_preview(tmp_path / "p" / "scan.png", image, mask, np.eye(3), title="scan")
    assert _red_pixels(path) > 50
    empty = write_preview(tmp_path / "empty.png", image, np.zeros_like(mask), np.eye(3))
    assert _red_pixels(empty) == 0
    with pytest.raises(ValueError, match="one shape"):
        write_preview(tmp_path / "bad.png", image, mask[:10], np.eye(3))


def test_preview_page_lists_every_scan_and_has_no_broken_links(tmp_path_factory, test_data, tmp_path):
    bundle = make_bundle(tmp_path_factory.mktemp("preview"), test_data)
    scans = [
        test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz",
        test_data / "dicom_mr_brain_tumor_progression" / "dicom" / "HippoCrop_artificial",
        tmp_path / "missing.nii.gz",
    ]
    out = tmp_path / "out"
    results = segment(bundle, scans, out, preview=True, progress=False)
    assert [r.status for r in results] == ["ok", "ok", "failed"]
    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.rows == ["ok", "ok", "failed"]
    assert sorted(parser.links) == sorted([
        "previews/hippocampus_001.png", "previews/hippocampus_001.png", "hippocampus_001_seg.nii.gz",
        "previews/HippoCrop_artificial.png", "previews/HippoCrop_artificial.png",
        "HippoCrop_artificial_seg.nii.gz", "HippoCrop_artificial_seg.dcm",
    ])
    for link in parser.links:
        assert not Path(link).is_absolute() and (out / link).is_file(), link
    assert "missing.nii.gz: input not found" in page and f"{results[0].volume_ml:.2f} mL" in page
    for name in ("hippocampus_001", "HippoCrop_artificial"):
        assert _red_pixels(out / "previews" / f"{name}.png") > 20  # the untrained model's mask is not empty
    with pytest.raises(SegmentError, match=r"previews/hippocampus_001\.png"):
        segment(bundle, scans[:1], out, preview=True, progress=False)
