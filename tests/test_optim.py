"""The one registry of optimizers and schedules: the Trainer, the config file and the algorithms agree on what
each name means (they used to disagree on the step schedule's factor)."""

import pytest
import torch

import quickstudy as qs
from quickstudy.config import ConfigError, load_config
from quickstudy.experiment import _schedule_options
from quickstudy.optim import OPTIMIZERS, SCHEDULES, build_schedule


def lrs(schedule, steps=9, options=None):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_schedule("test", schedule, optimizer, steps, options)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_step_schedule_halves_every_third_of_the_run_by_default():
    assert lrs("step") == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])
    assert lrs("step", options={"step_size": 2, "gamma": 0.1})[:5] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_trainer_and_config_give_the_same_step_schedule():
    """``schedule: step`` without ``step_size`` in a config, and ``Trainer(schedule="step")``: the same rates
    (the config documented gamma 0.5 while the Trainer multiplied by 0.1)."""
    config, _ = load_config(raw={"train": {"steps": 9, "lr": 1.0, "schedule": "step"}})
    from_config = lrs(config.train.schedule, options=_schedule_options(config))
    model = qs.models.MLP(1, 1, [4])
    trainer = qs.Trainer(qs.MAML(model, loss="mse"), qs.Sinusoid(shots=2, queries=2, batch_size=2), steps=9, lr=1.0,
                         schedule="step", progress=False, val_every=None, checkpoint_every=None)
    from_trainer = []
    for _ in range(9):
        from_trainer.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert from_config == from_trainer == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])


def test_linear_and_cosine_reach_zero_at_the_end():
    assert lrs("linear", steps=4) == pytest.approx([1, 0.75, 0.5, 0.25])
    assert lrs("cosine", steps=2) == pytest.approx([1, 0.5])


def test_config_choices_are_the_registry():
    for name in OPTIMIZERS:
        assert load_config(raw={"train": {"optimizer": name}})[0].train.optimizer == name
    for name in SCHEDULES:
        assert load_config(raw={"train": {"schedule": name}})[0].train.schedule == name
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config(raw={"train": {"optimizer": "adagrad"}})


def test_schedule_options_are_checked():
    with pytest.raises(ValueError, match="schedule 'cosine' takes no options"):
        lrs("cosine", options={"gamma": 0.5})
    with pytest.raises(ValueError, match="without a schedule"):
        lrs(None, options={"gamma": 0.5})
