"""Matching Networks' attention against a hand computation, its loss, and the full-context embeddings' LSTM cell
against torch.nn.LSTMCell."""

import math

import pytest
import torch
from torch import nn

from quickstudy.algorithms import MatchingNet
from quickstudy.algorithms.matchingnet import _lstm_step, matching_log_probs
from quickstudy.tasks.batch import TaskBatch


def identity_embedding():
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    return model


def test_attention_by_hand():
    """Support (1,0) of class 0, (0,1) and (1,1) of class 1; query (1,0): cosines 1, 0, 1/sqrt(2)."""
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    e = [math.exp(1.0), math.exp(0.0), math.exp(1 / math.sqrt(2))]
    p0 = e[0] / sum(e)
    # second query (0, 2): cosines 0, 1, 1/sqrt(2)
    f = [math.exp(0.0), math.exp(1.0), math.exp(1 / math.sqrt(2))]
    q0 = f[0] / sum(f)
    expected = torch.log(torch.tensor([[p0, 1 - p0], [q0, 1 - q0]], dtype=torch.float64))
    torch.testing.assert_close(matching_log_probs(query, support, labels, 2), expected)
    learner = MatchingNet(identity_embedding())
    torch.testing.assert_close(learner.adapt(support, labels)(query), expected)


def test_support_only_normalisation_by_hand():
    """normalize_query=False: logits are the query . unit support vectors. Query (0, 2) against (1,0), (0,1),
    (1,1)/sqrt(2): 0, 2, sqrt(2) -- beyond the [-1, 1] of cosines."""
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    e = [math.exp(0.0), math.exp(2.0), math.exp(math.sqrt(2))]
    p0 = e[0] / sum(e)
    expected = torch.log(torch.tensor([[p0, 1 - p0]], dtype=torch.float64))
    torch.testing.assert_close(matching_log_probs(query, support, labels, 2, normalize_query=False), expected)
    learner = MatchingNet(identity_embedding(), normalize_query=False)
    torch.testing.assert_close(learner.adapt(support, labels)(query), expected)


def test_loss_is_the_negative_log_probability_of_the_true_class():
    support = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    query = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    batch = TaskBatch(support, torch.tensor([[0, 1]]), query, torch.tensor([[1]]), ways=2)
    loss, _ = MatchingNet(identity_embedding(), strategy="loop").meta_loss(batch)
    # P(class 1) = e^0 / (e^1 + e^0)
    assert float(loss.detach()) == pytest.approx(-math.log(1 / (math.e + 1)), rel=1e-12)


def test_lstm_cell_equals_torch_lstm_cell():
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 4).double()
    x, h, c = (torch.randn(5, n, dtype=torch.float64) for n in (3, 4, 4))
    h_ref, c_ref = cell(x, (h, c))
    weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1)
    h_out, c_out = _lstm_step(x, h, c, weight, cell.bias_ih + cell.bias_hh)
    torch.testing.assert_close(h_out, h_ref)
    torch.testing.assert_close(c_out, c_ref)


def test_full_context_embeddings_read_the_whole_support_set():
    """With FCE a query's prediction changes when another support example changes; without FCE the cosine
    attention of one query to one support example does not."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    support = torch.randn(4, 2, generator=g, dtype=torch.float64)
    query = torch.randn(3, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    moved = support.clone()
    moved[3] += 5.0
    for fce, changes in ((True, True), (False, False)):
        torch.manual_seed(0)
        learner = MatchingNet(identity_embedding(), fce=fce, feature_dim=2).double()
        before = learner.adapt(support, labels)(query)[:, :3]
        after = learner.adapt(moved, labels)(query)[:, :3]
        # without FCE only the normaliser changes: the differences between the first three classes stay
        shifted = (after - after[:, :1]) - (before - before[:, :1])
        assert bool(shifted.abs().max() > 1e-6) == changes


def test_fce_needs_the_embedding_width():
    with pytest.raises(ValueError, match="feature_dim"):
        MatchingNet(nn.Identity(), fce=True)
