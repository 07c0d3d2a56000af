"""Epoch-mean training loss (with and without decollation), its resumable history, and the progress bar."""

import io

import pytest
import torch
from ignite.engine import Engine

from medtransfer.handlers import EpochLoss, TrainingProgress, batch_loss


def _engine(losses, as_list=False):
    values = iter(losses)

    def step(_engine, _batch):
        loss = torch.tensor(next(values), requires_grad=True)
        output = {"loss": loss, "pred": torch.zeros(2)}
        return [output, output] if as_list else output  # decollated: one dict per sample, loss replicated

    return Engine(step)


@pytest.mark.parametrize("as_list", [False, True])
def test_epoch_loss_is_the_mean_of_its_iterations(as_list):
    engine = _engine([1.0, 3.0, 0.5, 0.25], as_list)
    tracker = EpochLoss()
    tracker.attach(engine)
    engine.run(range(2), max_epochs=2)
    assert tracker.history == [(1, 2.0), (2, 0.375)]
    assert engine.state.metrics["train_loss"] == 0.375
    restored = EpochLoss()
    restored.load_state_dict(tracker.state_dict())
    assert restored.history == tracker.history and restored.last() == 0.375


def test_batch_loss_is_a_detached_scalar():
    loss = batch_loss({"loss": torch.tensor(2.0, requires_grad=True)})
    assert loss.ndim == 0 and not loss.requires_grad and float(loss) == 2.0


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_and_when_enabled():
    assert not TrainingProgress(True, stream=io.StringIO()).enabled  # a log file or a pipe: no bar
    assert not TrainingProgress(False, stream=_Terminal()).enabled
    terminal = _Terminal()
    progress = TrainingProgress(True, stream=terminal)
    engine = _engine([0.5] * 3)
    progress.attach(engine)
    engine.run(range(3), max_epochs=1)
    assert "loss=0.5" in terminal.getvalue() and "[2/3]" in terminal.getvalue()
