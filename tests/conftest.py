"""Shared fixtures: where the real test data lives, and a per-test MEDTRANSFER_HOME."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """The shared real data sets (MSD Hippocampus, HC18, ISBI 2012, DICOM series).

    CI sets MEDTRANSFER_TEST_DATA; the default is the checkout's sibling `shared/data`. Missing data is an
    error, never a skip: the real-data tests are the ones that tell whether the product works.
    """
    root = Path(os.environ.get("MEDTRANSFER_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (root / "msd_hippocampus").is_dir():
        raise RuntimeError(
            f"real test data not found at {root}; set MEDTRANSFER_TEST_DATA to the folder holding msd_hippocampus/"
        )
    return root


@pytest.fixture(scope="session")
def test_data() -> Path:
    return real_data_root()


@pytest.fixture()
def medtransfer_home(tmp_path, monkeypatch) -> Path:
    """An empty MEDTRANSFER_HOME so tests never read or write the user's cache."""
    home = tmp_path / "medtransfer_home"
    monkeypatch.setenv("MEDTRANSFER_HOME", str(home))
    return home


def error_text(error: BaseException) -> str:
    """The messages of an exception and all its causes (MONAI wraps errors raised inside configs)."""
    parts = [f"{type(error).__name__}: {error}"]
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
        parts.append(f"{type(error).__name__}: {error}")
    return "\n".join(parts)
