"""A learning regression check: a short ProtoNet run must be far above chance on held-out classes.

Uses Omniglot when ../shared/data (or $QUICKSTUDY_DATA) has it, the embedded glyphs otherwise."""

import pytest
import torch

import quickstudy as qs


def _dataset(split):
    try:
        return qs.data.Omniglot(split=split, download=False)
    except FileNotFoundError:
        return qs.data.Glyphs(split=split)


@pytest.mark.parametrize("algorithm", ["protonet", "fomaml"])
def test_short_meta_training_learns(algorithm):
    torch.manual_seed(0)
    train, test = _dataset("train"), _dataset("test")
    train_tasks = qs.EpisodeSampler(train, ways=5, shots=1, queries=5, batch_size=4, seed=0)
    test_tasks = qs.EpisodeSampler(test, ways=5, shots=1, queries=5, batch_size=10, seed=1)
    if algorithm == "protonet":
        learner = qs.ProtoNet(qs.models.Conv4(in_channels=1, ways=None, hidden=32, stride_variant=True))
        steps, floor = 150, 0.65
    else:
        learner = qs.FOMAML(qs.models.Conv4(in_channels=1, ways=5, hidden=32, stride_variant=True),
                            inner_lr=0.4, inner_steps=1, eval_steps=3)
        steps, floor = 150, 0.60
    before = qs.evaluate(learner, test_tasks, episodes=50, progress=False).mean
    qs.Trainer(learner, train_tasks, steps=steps, lr=3e-3, val_every=None, progress=False).fit()
    after = qs.evaluate(learner, test_tasks, episodes=50, progress=False)
    assert after.mean > floor, f"{algorithm}: {after} after {steps} steps (chance 20%, before {before:.2f})"
    assert after.mean > before + 0.1
