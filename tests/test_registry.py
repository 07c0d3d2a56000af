"""The bundle registry: where bundles and manifests live (checkout or wheel) and how a bundle is laid out."""

import subprocess
import sys
import zipfile

import pytest

from medtransfer import registry
from tests.conftest import REPO_ROOT


def test_a_checkout_reads_the_top_level_folders():
    assert registry.bundles_dir() == REPO_ROOT / "bundles"
    assert registry.manifests_dir() == REPO_ROOT / "data_manifests"
    assert registry.bundle_names() == ["binary_seg_2d", "binary_seg_3d"]
    assert registry.manifest_path("synthetic_2d") == REPO_ROOT / "data_manifests" / "synthetic_2d.json"
    assert registry.manifest_path("no_such_manifest") is None


def test_bundle_layout():
    bundle = registry.bundle_dir("binary_seg_3d")
    assert registry.bundle_dir(bundle) == bundle == registry.default_bundle(3)
    assert registry.train_config(bundle) == bundle / "configs" / "train.yaml"
    assert registry.inference_config(bundle) == bundle / "configs" / "inference.yaml"
    assert registry.pretrain_overlay("binary_seg_3d", "contrastive_reconstruction") == (
        bundle / "configs" / "pretrain" / "contrastive_reconstruction.yaml")
    assert registry.transfer_overlay(bundle, "encoder_frozen") == bundle / "configs" / "transfer" / "encoder_frozen.yaml"
    assert registry.pretrain_config_files(bundle, "segmentation") == (
        str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "pretrain.yaml"),
        str(bundle / "configs" / "pretrain" / "segmentation.yaml"))
    assert set(registry.transfer_strategies(bundle)) >= {"scratch", "encoder", "decoder", "full", "encoder_frozen"}
    with pytest.raises(registry.RegistryError, match="binary_seg_3d .* has no configs/transfer/warm.yaml"):
        registry.transfer_overlay(bundle, "warm")
    with pytest.raises(registry.RegistryError, match="unknown bundle 'binary_seg_4d'.*binary_seg_2d, binary_seg_3d"):
        registry.bundle_dir("binary_seg_4d")


def test_inference_json_comes_first(tmp_path):
    """The Model Zoo names configs/inference.json; an exported bundle has only that one."""
    (tmp_path / "configs").mkdir()
    for name in ("metadata.json", "inference.yaml", "inference.json"):
        (tmp_path / "configs" / name).write_text("{}")
    assert registry.inference_config(tmp_path) == tmp_path / "configs" / "inference.json"


def test_a_wheel_ships_every_bundle_and_manifest_file(tmp_path):
    """What `pip install .` installs: bundles/ and data_manifests/ as medtransfer/_bundles, medtransfer/_manifests."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path, timeout=300)
    (wheel,) = tmp_path.glob("medtransfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, packaged in (("bundles", "medtransfer/_bundles"), ("data_manifests", "medtransfer/_manifests")):
        files = [p for p in (REPO_ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files
        missing = [str(p) for p in files if f"{packaged}/{p.relative_to(REPO_ROOT / folder).as_posix()}" not in names]
        assert not missing, missing
    assert "medtransfer/inference/meta_schema.json" in names and "medtransfer/registry.py" in names
    assert not [n for n in names if n.startswith(("bundles/", "data_manifests/", "tests/"))]
