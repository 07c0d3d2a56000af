"""summarize / write_json_atomic / write_summary: nan-aware aggregates and strict, atomic JSON."""

import json
import math
import os
import stat

import numpy as np
import pytest

from medtransfer import atomic as atomic_module
from medtransfer.evaluation.summary import summarize, write_json_atomic, write_summary

CASES = [
    {"case": "a", "dice": 1.0, "hd95": 2.0, "surface_dice": 0.9},
    {"case": "b", "dice": 0.5, "hd95": float("nan"), "surface_dice": 0.0},
    {"case": "c", "dice": 0.0, "hd95": 4.0, "surface_dice": 0.6},
]


def strict_loads(text: str):
    """json.loads that fails on NaN / Infinity, i.e. what a strict JSON reader accepts."""

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_summary_layout_and_aggregates():
    result = summarize(CASES)
    assert list(result) == ["metric_per_case", "mean", "median", "std", "n_cases", "n_nan"]
    assert result["metric_per_case"] == CASES
    assert result["n_cases"] == 3
    assert result["mean"]["dice"] == pytest.approx(0.5)
    assert result["median"]["surface_dice"] == pytest.approx(0.6)
    assert result["std"]["dice"] == pytest.approx(np.std([1.0, 0.5, 0.0]))


def test_nan_is_ignored_and_counted():
    result = summarize(CASES)
    assert result["mean"]["hd95"] == pytest.approx(3.0)
    assert result["median"]["hd95"] == pytest.approx(3.0)
    assert result["std"]["hd95"] == pytest.approx(1.0)
    assert result["n_nan"] == {"dice": 0, "hd95": 1, "surface_dice": 0}


def test_all_nan_metric_aggregates_to_none():
    result = summarize([{"case": "a", "hd95": float("nan")}, {"case": "b", "hd95": float("nan")}])
    assert result["mean"] == result["median"] == result["std"] == {"hd95": None}
    assert result["n_nan"] == {"hd95": 2}


def test_aggregates_are_plain_floats_even_for_numpy_inputs():
    result = summarize([{"case": "a", "dice": np.float32(0.25)}, {"case": "b", "dice": np.float64(0.75)}])
    assert type(result["mean"]["dice"]) is float
    assert result["mean"]["dice"] == pytest.approx(0.5)


def test_only_real_valued_keys_are_metrics_and_missing_or_none_counts_as_nan():
    cases = [
        {"case": "a", "image": "a.nii.gz", "converged": True, "dice": 0.8, "hd95": 1.0},
        {"case": "b", "image": "b.nii.gz", "converged": False, "dice": None},  # None: nan after a JSON round trip
    ]
    result = summarize(cases)
    assert list(result["mean"]) == ["dice", "hd95"]
    assert result["n_nan"] == {"dice": 1, "hd95": 1}
    assert result["mean"] == {"dice": pytest.approx(0.8), "hd95": pytest.approx(1.0)}


def test_summary_does_not_alias_input_cases():
    cases = [dict(case) for case in CASES]
    summarize(cases)["metric_per_case"][0]["dice"] = -1.0
    assert cases[0]["dice"] == 1.0


def test_no_cases():
    assert summarize([]) == {"metric_per_case": [], "mean": {}, "median": {}, "std": {}, "n_cases": 0, "n_nan": {}}


def test_write_summary_produces_strict_json(tmp_path):
    path = tmp_path / "summary.json"
    returned = write_summary(path, CASES)
    text = path.read_text()
    loaded = strict_loads(text)
    assert loaded["metric_per_case"][1]["hd95"] is None
    assert loaded["mean"] == returned["mean"]
    assert loaded["n_nan"] == returned["n_nan"]
    assert text.startswith('{\n  "metric_per_case"')  # indent 2, insertion order kept
    assert list(loaded["metric_per_case"][0]) == ["case", "dice", "hd95", "surface_dice"]


def test_summary_survives_a_json_round_trip(tmp_path):
    path = tmp_path / "summary.json"
    original = write_summary(path, CASES)
    reloaded = summarize(strict_loads(path.read_text())["metric_per_case"])
    assert reloaded["mean"] == original["mean"]
    assert reloaded["n_nan"] == original["n_nan"]


def test_write_json_atomic_converts_nan_inf_and_numpy_values(tmp_path):
    path = tmp_path / "values.json"
    write_json_atomic(path, {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "arr": np.array([1, 2])})
    assert strict_loads(path.read_text()) == {"nan": None, "inf": None, "np": 0.5, "arr": [1, 2]}


def test_atomic_write_replaces_existing_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old, not even JSON")
    write_json_atomic(path, {"version": 2})
    assert strict_loads(path.read_text()) == {"version": 2}
    assert os.listdir(tmp_path) == ["summary.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_creates_missing_parent_folder(tmp_path):
    path = tmp_path / "fold_0" / "validation" / "summary.json"
    write_json_atomic(path, {"ok": True})
    assert strict_loads(path.read_text()) == {"ok": True}


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"version": 1})

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(atomic_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_json_atomic(path, {"version": 2})
    assert strict_loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_unserialisable_object_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"version": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert strict_loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["summary.json"]
