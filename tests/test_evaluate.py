"""evaluate / evaluate_regression_steps: counts tasks, exact CI, macro metrics, modes, bad outputs."""

import json
import math
import statistics

import pytest
import torch
from torch import nn

from quickstudy.algorithms.base import MetaLearner
from quickstudy.tasks.batch import TaskBatch
from quickstudy.training import EvalResult, evaluate, evaluate_regression_steps, macro_prf

WAYS, QUERIES = 3, 4  # 12 query points per task


class LabelTasks:
    """Classification batches whose content only matters through episode ids and labels."""

    def __init__(self, batch_size=4, num_batches=None):
        self.batch_size, self.num_batches, self.accessed = batch_size, num_batches, []

    def __len__(self):
        if self.num_batches is None:
            raise TypeError("infinite")
        return self.num_batches

    def __getitem__(self, i):
        self.accessed.append(i)
        b = self.batch_size
        labels = torch.arange(WAYS).repeat_interleave(QUERIES).expand(b, -1).contiguous()
        return TaskBatch(torch.zeros(b, WAYS, 2), torch.arange(WAYS).expand(b, -1).contiguous(),
                         torch.zeros(b, WAYS * QUERIES, 2), labels, ways=WAYS, shots=1,
                         episode_ids=torch.arange(i * b, (i + 1) * b))


def correct_count(episode):
    return (7 * episode) % (WAYS * QUERIES + 1)  # 0..12 queries right


class KnownLearner(MetaLearner):
    """Gets exactly ``correct_count(episode_id)`` queries right (the first ones), and records calls."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.dropout = nn.Dropout(0.5)
        self.calls = []

    def predict(self, batch, steps=None):
        self.calls.append({"tasks": batch.batch_size, "training": self.training,
                           "dropout_training": self.dropout.training, "grad": torch.is_grad_enabled(), "steps": steps})
        y = batch.query_y
        wrong = (y + 1) % WAYS
        position = torch.arange(y.shape[1]).expand_as(y)
        right = position < torch.tensor([correct_count(int(e)) for e in batch.episode_ids]).unsqueeze(1)
        pred = torch.where(right, y, wrong)
        return torch.nn.functional.one_hot(pred, WAYS).float() * 5.0


def expected_accuracies(n):
    return [correct_count(e) / (WAYS * QUERIES) for e in range(n)]


def test_ci_equals_1_96_sample_std_over_sqrt_n():
    result = evaluate(KnownLearner(), LabelTasks(), episodes=30, progress=False)
    accs = expected_accuracies(30)
    assert result.n == 30
    assert result.metric == "accuracy"
    assert result.per_episode == pytest.approx(accs)
    assert result.mean == pytest.approx(statistics.fmean(accs), rel=1e-12)
    assert result.ci95 == pytest.approx(1.96 * statistics.stdev(accs) / math.sqrt(30), rel=1e-12)
    assert result.metrics["accuracy"] == result.mean


def test_counts_tasks_not_batches_and_cuts_the_last_batch():
    tasks, learner = LabelTasks(batch_size=4), KnownLearner()
    result = evaluate(learner, tasks, episodes=10, progress=False)
    assert result.n == 10
    assert tasks.accessed == [0, 1, 2]  # 4 + 4 + 2 of the third
    assert [c["tasks"] for c in learner.calls] == [4, 4, 2]
    assert result.per_episode == pytest.approx(expected_accuracies(10))


def test_batch_size_bounds_predict_calls_without_changing_the_result():
    learner = KnownLearner()
    whole = evaluate(learner, LabelTasks(batch_size=4), episodes=10, progress=False)
    learner.calls.clear()
    chunked = evaluate(learner, LabelTasks(batch_size=4), episodes=10, batch_size=3, progress=False)
    assert [c["tasks"] for c in learner.calls] == [3, 1, 3, 1, 2]
    assert chunked.per_episode == whole.per_episode
    assert chunked.ci95 == whole.ci95


def test_macro_metrics_are_per_episode_then_averaged():
    result = evaluate(KnownLearner(), LabelTasks(), episodes=8, progress=False)
    per_episode = []
    for e in range(8):
        y = torch.arange(WAYS).repeat_interleave(QUERIES)
        pred = torch.where(torch.arange(len(y)) < correct_count(e), y, (y + 1) % WAYS)
        per_episode.append(macro_prf(pred, y, WAYS))
    for k, name in enumerate(("precision", "recall", "f1")):
        assert result.metrics[name] == pytest.approx(statistics.fmean(p[k] for p in per_episode), rel=1e-12)
    # the learner's logits are 5 * one-hot: cross-entropy per query is known
    right = -math.log(math.exp(5) / (math.exp(5) + 2))
    wrong = -math.log(1 / (math.exp(5) + 2))
    losses = [(c * right + (12 - c) * wrong) / 12 for c in (correct_count(e) for e in range(8))]
    assert result.metrics["loss"] == pytest.approx(statistics.fmean(losses), rel=1e-9)


def test_eval_mode_during_predict_and_modes_restored_afterwards():
    learner = KnownLearner()
    learner.train()
    learner.dropout.eval()  # a submodule frozen in eval mode by the user stays so
    evaluate(learner, LabelTasks(), episodes=4, steps=3, progress=False)
    call = learner.calls[0]
    assert call["training"] is False and call["dropout_training"] is False
    assert call["grad"] is True  # inner loops need autograd: evaluate must not wrap predict in no_grad
    assert call["steps"] == 3
    assert learner.training is True and learner.dropout.training is False


def test_too_short_source_and_bad_arguments():
    with pytest.raises(ValueError, match="2 batches"):
        evaluate(KnownLearner(), LabelTasks(batch_size=4, num_batches=2), episodes=9, progress=False)
    with pytest.raises(ValueError, match="episodes"):
        evaluate(KnownLearner(), LabelTasks(), episodes=0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        evaluate(KnownLearner(), LabelTasks(), episodes=2, steps=-1, progress=False)


def test_wrong_logit_shape_is_reported():
    class Bad(KnownLearner):
        def predict(self, batch, steps=None):
            return super().predict(batch, steps)[..., :2]

    with pytest.raises(ValueError, match="2 logits per query for a 3-way batch"):
        evaluate(Bad(), LabelTasks(), episodes=2, progress=False)


def test_eval_result_json_and_str():
    result = evaluate(KnownLearner(), LabelTasks(), episodes=1, progress=False)
    assert math.isnan(result.ci95)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ci95"] is None and data["n"] == 1 and data["metric"] == "accuracy"
    assert "per_episode" not in result.to_dict(per_episode=False)
    full = EvalResult(mean=0.5, ci95=0.01, n=600)
    assert str(full) == "accuracy 50.00% ± 1.00% (95% CI, 600 tasks)"


# --------------------------------------------------------------------------- regression
class LinearTasks:
    """y = a x + c with a ~ U(-2, 2), c ~ U(-1, 1), x ~ U(-5, 5); batch i is a pure function of (seed, i)."""

    def __init__(self, batch_size=5, shots=10, queries=10, seed=0):
        self.batch_size, self.shots, self.queries, self.seed = batch_size, shots, queries, seed

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        b = self.batch_size
        a = torch.rand(b, 1, 1, generator=g) * 4 - 2
        c = torch.rand(b, 1, 1, generator=g) * 2 - 1
        x = torch.rand(b, self.shots + self.queries, 1, generator=g) * 10 - 5
        y = a * x + c
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:], y[:, self.shots:],
                         episode_ids=torch.arange(i * b, (i + 1) * b))


class LinearGD(MetaLearner):
    """A line fitted by ``steps`` gradient steps on the support MSE, from learned (w, b)."""

    task_type = "regression"

    def __init__(self, inner_lr=0.02, steps=1):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.inner_lr, self.steps = inner_lr, steps

    def adapt(self, support_x, support_y, steps=None):
        w, b = self.w, self.b
        for _ in range(self.steps if steps is None else steps):
            loss = ((w * support_x + b - support_y) ** 2).mean()
            gw, gb = torch.autograd.grad(loss, (w, b))
            w, b = w - self.inner_lr * gw, b - self.inner_lr * gb
        return lambda x: w * x + b


def test_regression_mse_and_steps_curve():
    learner, tasks = LinearGD(), LinearTasks()
    curve = evaluate_regression_steps(learner, tasks, episodes=20, max_steps=10, progress=False)
    assert [r.steps for r in curve] == list(range(11))
    assert all(r.metric == "mse" and r.n == 20 for r in curve)
    means = [r.mean for r in curve]
    assert means[10] < 0.1 * means[0]  # adaptation works, so the curve must fall
    for k in (0, 3, 10):
        single = evaluate(learner, tasks, episodes=20, steps=k, progress=False)
        assert single.per_episode == curve[k].per_episode
    # MSE at 0 steps with w = b = 0 is the mean of y^2 over each task's queries, checked by hand
    y = torch.cat([tasks[i].query_y for i in range(4)]).double()
    per_task = (y ** 2).mean(dim=(1, 2))
    assert curve[0].per_episode == pytest.approx(per_task.tolist(), rel=1e-12)
    assert curve[0].ci95 == pytest.approx(1.96 * statistics.stdev(per_task.tolist()) / math.sqrt(20), rel=1e-9)
    assert curve[0].metrics["loss"] == curve[0].mean


def test_regression_shape_mismatch_is_an_error_not_a_broadcast():
    class Flat(LinearGD):
        def predict(self, batch, steps=None):
            return super().predict(batch, steps).squeeze(-1)

    with pytest.raises(ValueError, match="must match exactly"):
        evaluate(Flat(), LinearTasks(), episodes=5, progress=False)
