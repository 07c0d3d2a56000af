"""nnU-Net-v2-style summary of per-case metrics, written as strict JSON.

The layout (``metric_per_case`` plus aggregate blocks) follows nnU-Net v2's ``summary.json`` so results can be
read by the same tooling. Aggregates skip nan because a nan metric means "undefined for this case" (e.g. HD95
with one empty mask, see :func:`medtransfer.evaluation.metrics.case_metrics`), not "bad"; ``n_nan`` reports how
many cases were skipped so a mean over few cases is visible as such.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from medtransfer.atomic import save_json


def summarize(cases: list[dict]) -> dict:
    """Aggregate per-case metric dicts into mean / median / std over cases, ignoring nan.

    Args:
        cases: ``[{"case": "name", "dice": ..., "hd95": ..., ...}, ...]``. Every real-valued key (other than
            ``"case"``) found in any case is a metric; a case lacking it counts as nan for that metric.

    Returns:
        ``{"metric_per_case": cases, "mean": {...}, "median": {...}, "std": {...}, "n_cases": N,
        "n_nan": {metric: count}}``. Aggregates are plain floats, or ``None`` when every case is nan, so the
        result is JSON-safe. ``std`` is the population standard deviation (ddof=0), as numpy computes it.
    """
    metrics = _metric_names(cases)
    columns = {name: [_as_float(case.get(name, math.nan)) for case in cases] for name in metrics}
    valid = {name: [v for v in values if not math.isnan(v)] for name, values in columns.items()}
    return {
        "metric_per_case": [dict(case) for case in cases],
        "mean": {name: _aggregate(np.mean, values) for name, values in valid.items()},
        "median": {name: _aggregate(np.median, values) for name, values in valid.items()},
        "std": {name: _aggregate(np.std, values) for name, values in valid.items()},
        "n_cases": len(cases),
        "n_nan": {name: len(columns[name]) - len(valid[name]) for name in metrics},
    }


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as strict JSON so that ``path`` is never half-written (nan/inf become ``null``)."""
    save_json(path, obj)


def write_summary(path, cases: list[dict]) -> dict:
    """Summarize ``cases`` and write the summary atomically to ``path``; returns the summary."""
    summary = summarize(cases)
    write_json_atomic(path, summary)
    return summary


def _metric_names(cases: list[dict]) -> list[str]:
    """Real-valued keys across all cases, in first-seen order; names and other labels are not metrics."""
    names: dict[str, None] = {}
    for case in cases:
        for key, value in case.items():
            if key != "case" and _is_real(value):
                names.setdefault(key)
    return list(names)


def _is_real(value) -> bool:
    """Real numbers, numpy scalars included; bools are flags, not metrics."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_float(value) -> float:
    """A metric value as a float; ``None`` (how nan round-trips through JSON) or any non-number counts as nan."""
    return float(value) if _is_real(value) else math.nan


def _aggregate(reduce, values: list[float]) -> float | None:
    """Apply a numpy reduction, returning ``None`` instead of a nan mean of nothing."""
    return float(reduce(values)) if values else None
