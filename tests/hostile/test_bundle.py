"""`medtransfer bundle verify` and bundle zips: executable config items listed, hostile zips refused unpacked."""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

from medtransfer.inference.bundle_loading import BundleError, load_model
from medtransfer.inference.config_expressions import (
    ALLOW_LIST_PATH,
    derive_allow_list,
    executable_items,
    not_allowed,
)
from tests.conftest import REPO_ROOT
from tests.hostile.conftest import clear_error, medtransfer

BUNDLES = sorted(p for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
PAYLOAD = "$__import__('pathlib').Path('PWNED').touch()"


def test_the_shipped_allow_list_is_what_the_project_bundles_use():
    shipped = json.loads(ALLOW_LIST_PATH.read_text())
    derived = derive_allow_list(BUNDLES)
    assert {k: shipped[k] for k in derived} == derived  # regenerate with python -m ...config_expressions bundles/*
    assert len(derived["expression"]) > 20 and "medtransfer.networks.build_dynunet" in derived["target"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_project_bundles_pass(bundle):
    assert executable_items(bundle) and not_allowed(bundle) == []


@pytest.fixture()
def bundle_copy(tmp_path):
    return Path(shutil.copytree(REPO_ROOT / "bundles" / "binary_seg_2d", tmp_path / "bundle"))


def _edit(bundle, name, change):
    path = bundle / "configs" / name
    content = yaml.safe_load(path.read_text()) if path.exists() else {}
    change(content)
    path.write_text(yaml.safe_dump(content, sort_keys=False))


INJECTIONS = [
    ("expression-in-unread-key", "train.yaml", lambda c: c.update(notes=PAYLOAD), "train.yaml: notes"),
    ("expression-in-inference", "inference.yaml", lambda c: c.update(device=PAYLOAD), "inference.yaml: device"),
    ("import-statement", "evaluate.yaml", lambda c: c.update(imports=["$import os"]), "evaluate.yaml: imports#0"),
    ("target-os-system", "inference.yaml",
     lambda c: c.update(evil={"_target_": "os.system", "command": "touch PWNED"}), "'os.system' (target)"),
    ("target-subprocess", "train.yaml",
     lambda c: c["train"]["main_process_handlers"].append({"_target_": "subprocess.Popen"}), "subprocess.Popen"),
    ("target-eval-builtin", "transfer/encoder.yaml", lambda c: c.update(x={"_target_": "builtins.eval"}),
     "builtins.eval"),
    ("reference-expression", "inference.yaml", lambda c: c.update(y="@__import__('os')"), "(reference)"),
    ("macro-other-file", "inference.yaml", lambda c: c.update(z="%/etc/passwd#root"), "(macro)"),
    ("changed-expression", "train.yaml", lambda c: c.update(network="$@network_def.to(@device) or exec('1')"),
     "train.yaml: network"),
    ("new-config-file", "extra.yaml", lambda c: c.update(run=[PAYLOAD]), "extra.yaml: run#0"),
    ("nested-config-folder", "pretrain/evil.yaml", lambda c: c.update(initialize=[PAYLOAD]), "pretrain/evil.yaml"),
    ("in-metadata", "metadata.json", lambda c: c.update(note=PAYLOAD), "metadata.json: note"),
]


@pytest.mark.parametrize("name, change, needle", [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_an_injected_executable_item_fails_verify(name, change, needle, bundle_copy, guard, capsys):
    if name == "metadata.json":
        path = bundle_copy / "configs" / "metadata.json"
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content))
    else:
        _edit(bundle_copy, name, change)
    guard.snapshot()
    result = medtransfer(["bundle", "verify", bundle_copy], capsys)
    clear_error(result, 1, needle, "not on medtransfer's allow-list")
    report = json.loads(result.out)
    assert not report["ok"] and report["checks"]["config_expressions"].startswith("ValueError: 1 executable")
    assert not (bundle_copy / "PWNED").exists() and not Path("PWNED").exists()


def test_repo_bundle_verifies(guard, capsys):
    guard.snapshot()
    result = medtransfer(["bundle", "verify", REPO_ROOT / "bundles" / "binary_seg_2d"], capsys)
    clear_error(result, 0, '"config_expressions": "passed"')


BROKEN = [
    ("config-not-yaml", lambda b: (b / "configs" / "train.yaml").write_text("a: [unclosed\n"), "train.yaml: not a readable"),
    ("config-non-utf8", lambda b: (b / "configs" / "train.yaml").write_bytes(b"a: \xff\xfe\n"), "train.yaml"),
    ("metadata-not-json", lambda b: (b / "configs" / "metadata.json").write_text("{"), "metadata.json"),
    ("no-configs", lambda b: shutil.rmtree(b / "configs"), "missing: configs/metadata.json"),
    ("config-symlink-outside", lambda b: (b / "configs" / "leak.yaml").symlink_to("/etc/hostname"),
     "leak.yaml: a symbolic link out of the bundle"),
]


@pytest.mark.parametrize("damage, needle", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_a_broken_bundle_fails_verify_with_the_file_named(damage, needle, bundle_copy, guard, capsys):
    damage(bundle_copy)
    guard.snapshot()
    clear_error(medtransfer(["bundle", "verify", bundle_copy], capsys), 1, needle)


def test_verify_of_a_missing_folder(guard, tmp_path, capsys):
    guard.snapshot()
    clear_error(medtransfer(["bundle", "verify", tmp_path / "nope"], capsys), 1, "missing: configs/metadata.json")


# zips ----------------------------------------------------------------------------------------------------------
def _temp_bundles() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("medtransfer_bundle_*")}


def _bomb(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("bundle/configs/metadata.json", "{}")
        with zipped.open("bundle/models/model.pt", "w", force_zip64=True) as member:
            block = b"\0" * 2**20
            for _ in range(megabytes):
                member.write(block)
    return path


def _many_members(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for index in range(10_001):
            zipped.writestr(f"bundle/f{index}", b"")
    return path


def _escaping(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("bundle/configs/metadata.json", "{}")
        zipped.writestr("../../escaped.txt", "x")
    return path


def _absolute(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        info = zipfile.ZipInfo("bundle/configs/metadata.json")
        zipped.writestr(info, "{}")
        zipped.writestr(zipfile.ZipInfo("/tmp/medtransfer_absolute_member"), "x")
    return path


def _symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("bundle/configs/metadata.json", "{}")
        info = zipfile.ZipInfo("bundle/models/model.pt")
        info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
        zipped.writestr(info, "/etc/passwd")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


ZIPS = [
    ("zip-bomb", lambda p: _bomb(p, 501), "unpacks to 501 MiB"),
    ("too-many-members", _many_members, "10001 members"),
    ("path-escapes", _escaping, "would be written outside the folder"),
    ("absolute-member", _absolute, "would be written outside the folder"),
    ("symlink-member", _symlink, "is a symbolic link"),
    ("not-a-zip", lambda p: _write(p, b"\x00" * 100), "not a readable zip"),
    ("truncated-zip", lambda p: _write(p, _escaping(p).read_bytes()[:-30]), "not a readable zip"),
]


@pytest.mark.parametrize("make, needle", [c[1:] for c in ZIPS], ids=[c[0] for c in ZIPS])
def test_a_hostile_zip_is_refused_before_unpacking_and_cleaned_up(make, needle, guard, tmp_path, capsys):
    archive = make(tmp_path / "bundle.zip")
    (tmp_path / "scans").mkdir()
    before = _temp_bundles()
    guard.snapshot()
    result = medtransfer(["segment", archive, tmp_path / "scans", "--output", tmp_path / "masks", "--no-progress"],
                         capsys)
    clear_error(result, 2, str(archive), needle)
    assert _temp_bundles() == before  # no temporary folder is left behind
    assert not Path("/tmp/medtransfer_absolute_member").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_zip_cap_is_configurable(tmp_path, monkeypatch):
    archive = _bomb(tmp_path / "bundle.zip", 3)
    monkeypatch.setenv("MEDTRANSFER_MAX_UNZIPPED_MB", "2")
    with pytest.raises(BundleError, match="unpacks to 3 MiB, more than the 2 MiB"):
        load_model(archive)
    monkeypatch.setenv("MEDTRANSFER_MAX_UNZIPPED_MB", "8")
    before = _temp_bundles()
    with pytest.raises(BundleError, match="no configs/inference"):  # under the cap: unpacked, then refused
        load_model(archive)
    assert _temp_bundles() == before  # removed on the error path too


def test_trusted_verify_lists_the_items_without_failing(bundle_copy):
    from medtransfer.inference.config_expressions import check_config_expressions

    _edit(bundle_copy, "inference.yaml", lambda c: c.update(device=PAYLOAD))
    with pytest.raises(ValueError, match="inference.yaml: device"):
        check_config_expressions(bundle_copy)
    assert "inference.yaml: device" in check_config_expressions(bundle_copy, trusted=True)
