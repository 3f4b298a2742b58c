"""SimpleShot's CL2N nearest class mean by hand, and its running mean of the training features."""

import torch
import torch.nn.functional as F
from torch import nn

from quickstudy.algorithms import SimpleShot, TransductiveFineTune
from quickstudy.algorithms.transductive import transductive_loss
from quickstudy.tasks.batch import TaskBatch


def identity(d=2):
    model = nn.Linear(d, d, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(d))
    return model


def test_centred_l2_normalised_nearest_mean_by_hand():
    learner = SimpleShot(identity(), num_train_classes=3, feature_dim=2).double()
    with torch.no_grad():
        learner.feature_mean.copy_(torch.tensor([1.0, 1.0]))
    support = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)  # centred: (1, 0), (0, 2) -> (1, 0), (0, 1)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)                 # centred: (0, -1) -> (0, -1)
    logits = learner.adapt(support, torch.tensor([0, 1]))(query)
    torch.testing.assert_close(logits, -torch.tensor([[2.0, 4.0]], dtype=torch.float64))  # |(-1,-1)|^2, |(0,-2)|^2


def test_feature_mean_averages_the_pre_training_features():
    learner = SimpleShot(identity(), num_train_classes=4, feature_dim=2, mean_momentum=0.5).double()
    g = torch.Generator().manual_seed(0)
    means = []
    for _ in range(3):
        x = torch.randn(1, 4, 2, generator=g, dtype=torch.float64)
        batch = TaskBatch(x, torch.tensor([[0, 1, 2, 3]]), x, torch.tensor([[0, 1, 2, 3]]), ways=4,
                          classes=torch.tensor([[0, 1, 2, 3]]))
        learner.meta_loss(batch)
        means.append(x[0].mean(0))
    # first batch: its mean; then rate max(0.5, 1/n): (m1 + m2) / 2, then halfway to m3
    expected = (means[0] + means[1]) / 2 * 0.5 + means[2] * 0.5
    torch.testing.assert_close(learner.feature_mean, expected)
    learner.eval()
    learner.meta_loss(batch)  # evaluation mode: no update
    torch.testing.assert_close(learner.feature_mean, expected)


def test_transductive_loss_is_support_cross_entropy_plus_query_entropy():
    support, query = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    entropy = (torch.log(torch.tensor(2.0)) - (p * p.log()).sum()) / 2  # uniform query, then (e, 1)/(e + 1)
    expected = F.cross_entropy(support, torch.tensor([0])) + entropy
    torch.testing.assert_close(transductive_loss(support, torch.tensor([0]), query), expected)


def test_transductive_finetune_starts_from_the_support_cosine_head_and_leaves_the_model_alone():
    model = identity()
    learner = TransductiveFineTune(model, num_train_classes=3, feature_dim=2, scale=10.0).double()
    support = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    query = torch.tensor([[1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    logits = learner.adapt(support, torch.tensor([0, 1]), steps=0)(query)
    torch.testing.assert_close(logits, 10.0 * F.normalize(query, dim=-1))  # the class directions are the axes
    before = model.weight.clone()
    learner.adapt(support, torch.tensor([0, 1]), steps=3)(query)
    torch.testing.assert_close(model.weight, before)
