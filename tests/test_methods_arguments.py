"""The new methods reject bad arguments with one line naming the argument (the CLI prints it as `error: ...`)."""

import pytest
from torch import nn

import quickstudy as qs
from quickstudy.models import Conv4


def embedding():
    return Conv4(ways=None, hidden=4, image_size=16)


@pytest.mark.parametrize("build, message", [
    (lambda: qs.IMAML(Conv4(ways=3, hidden=4, image_size=16), lam=0.0), "IMAML: lam must be a finite number > 0"),
    (lambda: qs.IMAML(Conv4(ways=3, hidden=4, image_size=16), cg_steps=-1), "IMAML: cg_steps must be an integer >= 0"),
    (lambda: qs.MAMLPlusPlus(Conv4(ways=3, hidden=4, image_size=16), inner_steps=0),
     "MAMLPlusPlus: inner_steps must be a positive integer"),
    (lambda: qs.MAMLPlusPlus(Conv4(ways=3, hidden=4, image_size=16), msl_iterations=-1),
     "MAMLPlusPlus: msl_iterations must be an integer >= 0"),
    (lambda: qs.MetaOptNet(embedding(), C=0), "MetaOptNet: C must be a finite number > 0"),
    (lambda: qs.MetaOptNet(embedding(), label_smoothing=1.0), "MetaOptNet: label_smoothing must be in"),
    (lambda: qs.MatchingNet(embedding(), fce="yes"), "MatchingNet: fce must be True or False"),
    (lambda: qs.RelationNet(embedding(), feature_shape=[2, 3]), "RelationNet: feature_shape must be"),
    (lambda: qs.RelationNet(nn.Identity()), "RelationNet: cannot tell the embedding's shape"),
    (lambda: qs.SimpleShot(embedding(), num_train_classes=10, transform="zca"), "SimpleShot: transform must be one of"),
    (lambda: qs.TransductiveFineTune(embedding(), num_train_classes=10, adapt_lr=-1.0),
     "FineTune: adapt_lr must be a finite number > 0"),
    (lambda: Conv4(pooled_blocks=5), "Conv4: pooled_blocks must be in 0..4"),
])
def test_bad_arguments_name_themselves(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_adapt_rejects_labels_with_gaps():
    import torch

    learner = qs.ProtoMAML(embedding())
    with pytest.raises(ValueError, match=r"ProtoMAML.adapt: labels must cover 0..2 with no gaps; missing \[1\]"):
        learner.adapt(torch.zeros(2, 1, 16, 16), torch.tensor([0, 2]))
