"""Training that diverges while every number stays finite is reported, naming the step: an exploding loss, an
exploding weight norm, validation at chance after warm-up. ``strict`` stops the run instead."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from quickstudy.training import EvalResult, History
from quickstudy.training.callbacks import DivergenceError, DivergenceMonitor, DivergenceWarning

from _runs import cli, write_config


def fake_trainer(steps: int = 100, ways: int = 5):
    torch.manual_seed(0)
    learner = torch.nn.Linear(8, 4)
    return SimpleNamespace(learner=learner, steps=steps, step=0, history=History(),
                           val_tasks=SimpleNamespace(ways=ways))


def run_steps(monitor, trainer, losses):
    monitor.on_fit_start(trainer)
    for loss in losses:
        trainer.step += 1
        monitor.on_step_end(trainer, trainer.step, {"loss": loss})


def accuracy(mean: float, ci95: float = 0.01) -> EvalResult:
    return EvalResult(mean=mean, ci95=ci95, n=100, metric="accuracy", metrics={"accuracy": mean})


def test_an_exploding_loss_is_reported_naming_the_step():
    trainer = fake_trainer()
    with pytest.warns(DivergenceWarning, match=r"step 3: the training loss \(5\.2e\+11\) .* starting value \(1\.05"):
        run_steps(DivergenceMonitor(), trainer, [1.05, 1.2, 5.2e11, 3e11])


def test_strict_stops_at_the_step():
    trainer = fake_trainer()
    with pytest.raises(DivergenceError, match="step 3"):
        run_steps(DivergenceMonitor(strict=True), trainer, [1.05, 1.2, 5.2e11])
    assert trainer.step == 3


def test_an_exploding_weight_norm_is_reported():
    trainer = fake_trainer()
    monitor = DivergenceMonitor()
    monitor.on_fit_start(trainer)
    with torch.no_grad():
        trainer.learner.weight.mul_(1e4)
    trainer.step = 10
    with pytest.warns(DivergenceWarning, match=r"step 10: the weights' norm"):
        monitor.on_step_end(trainer, 10, {"loss": 1.0})


@pytest.mark.parametrize("step,mean,warns", [(10, 0.20, False),  # the first validation is warm-up
                                             (50, 0.21, True), (50, 0.18, True), (50, 0.40, False)])
def test_validation_at_chance_after_warm_up_is_reported(step, mean, warns):
    trainer = fake_trainer(steps=100, ways=5)
    monitor = DivergenceMonitor()
    monitor.on_fit_start(trainer)
    if step > 10:
        trainer.step = 10
        monitor.on_validation_end(trainer, 10, accuracy(0.2))
    trainer.step = step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.on_validation_end(trainer, step, accuracy(mean, ci95=0.02))
    messages = [str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)]
    assert bool(messages) == warns, messages
    if warns:
        assert f"step {step}: validation accuracy" in messages[0] and "chance for 5-way tasks" in messages[0]


def test_a_healthy_run_is_quiet():
    trainer = fake_trainer()
    monitor = DivergenceMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        run_steps(monitor, trainer, [1.6, 1.5, 1.2, 0.9, 2.5, 0.7] * 5)
        monitor.on_validation_end(trainer, trainer.step, accuracy(0.6))


def test_each_problem_is_reported_once():
    trainer = fake_trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_steps(DivergenceMonitor(), trainer, [1.0] + [1e9] * 20)
    assert sum(issubclass(w.category, DivergenceWarning) for w in caught) == 1


def test_the_cli_warns_and_strict_stops(tmp_path, capsys):
    """The reported case: MAML on glyphs with lr 1e6 trained 'successfully' at chance with weights ~1e7."""
    config = write_config(tmp_path, algorithm={"name": "maml", "inner_lr": 0.4, "inner_steps": 1},
                          train={"lr": 1e6, "steps": 4})
    code, _, err = cli(capsys, "train", config, "--out", tmp_path / "warned", "--quiet")
    assert code == 0 and "quickstudy train: warning: step 2: the training loss" in err
    code, _, err = cli(capsys, "train", config, "--out", tmp_path / "stopped", "--quiet", "--strict")
    assert code == 2 and "quickstudy train: error: step 2: the training loss" in err
    assert "Traceback" not in err
