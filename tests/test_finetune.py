"""Fine-tune baselines (Chen et al. 2019): supervised pre-training on global class ids, then a new head."""

import pytest
import torch
import torch.nn.functional as F

from quickstudy.algorithms import FineTune
from quickstudy.models import MLP
from quickstudy.tasks.batch import TaskBatch

CENTRES = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0], [2.0, 2.0], [-2.0, -2.0]])


def batch_from_classes(B=4, N=3, K=2, Q=3, seed=0, num_classes=6):
    """Each task draws N of the num_classes global classes; points sit around the class centres."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(num_classes, generator=g)[:N] for _ in range(B)])
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    def points(y):
        return CENTRES[classes.gather(1, y)] + 0.5 * torch.randn(*y.shape, 2, generator=g)
    return TaskBatch(points(sy), sy, points(qy), qy, ways=N, shots=K, classes=classes)


def backbone(seed=0):
    torch.manual_seed(seed)
    return MLP(in_features=2, out_features=None, hidden=[16])


def test_pretraining_uses_global_class_ids():
    ft = FineTune(backbone(), num_train_classes=6).double()
    batch = batch_from_classes().inputs_to(torch.float64)
    loss, metrics = ft.meta_loss(batch)
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    y = torch.cat([batch.classes.gather(1, batch.support_y).flatten(), batch.classes.gather(1, batch.query_y).flatten()])
    expected = F.cross_entropy(ft.classifier(ft.model(x)), y)
    assert loss.detach().item() == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_pretraining_loss_decreases_on_a_separable_problem(head):
    ft = FineTune(backbone(), num_train_classes=6, head=head)
    opt = torch.optim.Adam(ft.parameters(), lr=1e-2)
    held_out = batch_from_classes(seed=99)
    before = ft.meta_loss(held_out)[1]["loss"]
    for step in range(40):
        opt.zero_grad()
        ft.meta_backward(batch_from_classes(seed=step))
        opt.step()
    after, metrics = ft.meta_loss(held_out)
    assert float(after.detach()) < 0.6 * before and metrics["accuracy"] > 0.8


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_adapt_fits_a_head_that_classifies_the_support_set(head):
    ft = FineTune(backbone(1), num_train_classes=6, head=head)
    task = batch_from_classes(B=1, N=5, K=3, seed=3).task(0)
    before = [p.detach().clone() for p in ft.parameters()]
    predictor = ft.adapt(task.support_x, task.support_y)
    assert (predictor(task.support_x).argmax(-1) == task.support_y).all()
    # (the cosine head's scale 2, as the authors' code for <= 200 classes, bounds how low its loss can go)
    assert predictor.support_losses[-1] < (0.5 if head == "linear" else 1.0) * predictor.support_losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, ft.parameters()))  # backbone frozen
    assert predictor(task.query_x).shape == (15, 5)
    outputs = ft.predict(batch_from_classes(B=2, seed=4), steps=10)
    assert outputs.shape == (2, 9, 3) and not outputs.requires_grad


def test_errors_name_what_is_wrong():
    ft = FineTune(backbone(), num_train_classes=4)
    with pytest.raises(ValueError, match=r"class ids in \[0, 5\] but num_train_classes=4"):
        ft.meta_loss(batch_from_classes(B=8))
    b = batch_from_classes()
    with pytest.raises(ValueError, match="no `classes`"):
        ft.meta_loss(TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y, ways=3))
    with pytest.raises(ValueError, match="head must be one of 'linear', 'cosine'; got 'mlp'"):
        FineTune(backbone(), 4, head="mlp")
    with pytest.raises(ValueError, match="feature_dim"):
        FineTune(torch.nn.Sequential(torch.nn.Linear(2, 3)), 4)
    with pytest.raises(ValueError, match="num_train_classes"):
        FineTune(backbone(), 0)
    assert FineTune(torch.nn.Sequential(torch.nn.Linear(2, 3)), 4, feature_dim=3).feature_dim == 3
