"""BestModelSaver on a real ignite engine: model.pt holds the best epoch's weights, and its state resumes."""

import torch
from ignite.engine import Engine, Events

from medtransfer.handlers import BestModelSaver
from medtransfer.training import RunDirectory, read_state_dict

VAL_DICE = [0.40, 0.70, 0.65, 0.72, 0.50]  # best at epoch 4, second best at epoch 2


def _evaluator(values):
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(engine):  # registered before the saver: the metric exists when it reads it
        engine.state.metrics["val_mean_dice"] = values[engine.state.epoch - 1]

    return engine


def test_best_model_is_the_best_epochs_weights_and_resumes(tmp_path):
    run = RunDirectory(tmp_path / "run", {"task": "segmentation"}).prepare()
    network = torch.nn.Linear(3, 2)
    weights_at = {}
    evaluator = _evaluator(VAL_DICE)
    saver = BestModelSaver(run, network)
    saver.attach(evaluator)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _train_a_step(engine):  # after the saver: the weights change between validations
        weights_at[engine.state.epoch] = {k: v.clone() for k, v in network.state_dict().items()}
        with torch.no_grad():
            network.weight.add_(1.0)

    evaluator.run([0], max_epochs=len(VAL_DICE))
    assert (saver.best_epoch, saver.best_value) == (4, 0.72)
    assert saver.history == list(enumerate(VAL_DICE, start=1))
    saved = read_state_dict(run.model_path)
    assert all(torch.equal(saved[k], weights_at[4][k]) for k in saved)

    resumed = BestModelSaver(run, network)
    resumed.load_state_dict(saver.state_dict())  # what ResumableCheckpoint stores and restores
    assert (resumed.best_epoch, resumed.best_value, resumed.history) == (4, 0.72, saver.history)
    resumed(_finished_epoch(6, 0.71))  # worse than the restored best: model.pt stays
    assert all(torch.equal(read_state_dict(run.model_path)[k], weights_at[4][k]) for k in saved)
    resumed(_finished_epoch(7, 0.80))
    assert resumed.best_epoch == 7
    assert torch.equal(read_state_dict(run.model_path)["weight"], network.weight.detach())


def _finished_epoch(epoch, value):
    engine = Engine(lambda engine, batch: None)
    engine.state.epoch = epoch
    engine.state.metrics = {"val_mean_dice": value}
    return engine
