"""Relation Networks: class features are the sums of the shots' embeddings, each paired with a query by
concatenation (class first), scored by the relation module, and trained with the squared error to the one-hot match."""

import torch
import torch.nn.functional as F
from torch import nn

from quickstudy.algorithms import RelationNet
from quickstudy.algorithms.execution import Run
from quickstudy.tasks.batch import Task


class Identity2d(nn.Module):
    """Embedding: the input itself, flattened ([n, C, H, W] -> [n, C*H*W]), with a trainable no-op."""

    feature_shape = (2, 4, 4)

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return (self.scale * x).flatten(1)


def test_scores_pair_summed_shots_with_each_query():
    torch.manual_seed(0)
    learner = RelationNet(Identity2d()).double()
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    qx = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    sy, qy = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 1])
    scores = learner.task_outputs(learner.meta_parameters(), Task(sx, sy, qx, qy, 2), Run(learner.learner))
    classes = torch.stack([sx[0] + sx[2], sx[1] + sx[3]])  # the sum over each class's shots
    pairs = torch.stack([torch.cat([classes[n], qx[q]], dim=0) for q in range(3) for n in range(2)])
    expected = learner.relation_scores(dict(learner.relation), pairs).view(3, 2)
    torch.testing.assert_close(scores, expected)
    assert bool(((scores > 0) & (scores < 1)).all())
    loss = learner.output_loss(scores, qy)
    torch.testing.assert_close(loss, ((scores - F.one_hot(qy, 2).double()) ** 2).mean())


def test_small_maps_are_compared_as_vectors():
    class Tiny(Identity2d):
        feature_shape = (2, 2, 2)

    learner = RelationNet(Tiny())
    assert learner.feature_shape == (8,)
