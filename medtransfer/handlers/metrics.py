"""Per-case test metrics collected from a MONAI evaluator's decollated outputs."""

from __future__ import annotations

from ignite.engine import Engine, Events

from medtransfer.evaluation.metrics import case_metrics


def _case_name(sample: dict, prediction) -> str:
    if "id" in sample:
        return str(sample["id"])
    meta = getattr(prediction, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "case"))


def _spacing(prediction) -> list[float] | None:
    pixdim = getattr(prediction, "pixdim", None)
    return None if pixdim is None else [float(v) for v in pixdim]


class CaseMetrics:
    """Dice, HD95 and surface Dice of every case an evaluator sees (foreground channel of one-hot pred/label).

    Spacing comes from the prediction's metadata, so HD95 is in millimetres in the evaluated (resampled) grid.
    """

    def __init__(self) -> None:
        self.cases: list[dict] = []

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.STARTED, self.reset)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def reset(self, _engine: Engine | None = None) -> None:
        self.cases = []

    def collect(self, engine: Engine) -> None:
        for sample, output in zip(engine.state.batch, engine.state.output):
            prediction, label = output["pred"], output["label"]
            metrics = case_metrics(prediction[1] > 0.5, label[1] > 0.5, spacing=_spacing(prediction))
            self.cases.append({"case": _case_name(sample, prediction), **metrics})
