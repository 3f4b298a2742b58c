"""Trainer: exact resume, same seed same numbers, NaN stops, best checkpoint, CSV/TensorBoard logs, report."""

import csv
import functools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from quickstudy.algorithms.base import MetaLearner
from quickstudy.tasks.batch import TaskBatch
from quickstudy.training import (
    CSV_COLUMNS,
    Callback,
    NonFiniteLossError,
    Trainer,
    evaluate,
    evaluate_regression_steps,
    load_checkpoint,
    make_report,
)

DIM, WAYS, SHOTS, QUERIES = 4, 3, 2, 4
TIMING = {"tasks_per_s", "elapsed"}


class BlobTasks:
    """Gaussian-blob N-way K-shot tasks; batch i is a pure function of (seed, i)."""

    def __init__(self, seed=0, batch_size=2):
        self.seed, self.batch_size = seed, batch_size

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        b, n = self.batch_size, WAYS
        centers = torch.randn(b, n, 1, DIM, generator=g) * 2
        points = centers + 0.7 * torch.randn(b, n, SHOTS + QUERIES, DIM, generator=g)
        labels = torch.arange(n).view(1, n, 1).expand(b, n, SHOTS + QUERIES)
        sx, qx = points[:, :, :SHOTS].reshape(b, -1, DIM), points[:, :, SHOTS:].reshape(b, -1, DIM)
        sy, qy = labels[:, :, :SHOTS].reshape(b, -1), labels[:, :, SHOTS:].reshape(b, -1)
        return TaskBatch(sx, sy, qx, qy, ways=n, shots=SHOTS, episode_ids=torch.arange(i * b, (i + 1) * b))


class LineTasks:
    """Regression batches y = 2x + 1 (content is irrelevant to the scripted learners that use it)."""

    batch_size = 2

    def __getitem__(self, i):
        x = torch.linspace(-1, 1, 2 * 5).reshape(2, 5, 1)
        return TaskBatch(x, 2 * x + 1, x, 2 * x + 1, episode_ids=torch.arange(2 * i, 2 * i + 2))


class TinyMAML(MetaLearner):
    """Second-order MAML, one inner step, on a tiny MLP. ``noisy`` draws from the torch (dropout),
    Python and NumPy generators every step and in ``adapt``, so any RNG mishandling changes the result."""

    def __init__(self, inner_lr=0.5, noisy=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(0.2 if noisy else 0.0), nn.Linear(16, WAYS))
        self.inner_lr, self.noisy = inner_lr, noisy

    def _adapted(self, sx, sy, steps, create_graph):
        params = dict(self.net.named_parameters())
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(self.net, params, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {k: v - self.inner_lr * g for (k, v), g in zip(params.items(), grads)}
        return params

    def meta_loss(self, batch):
        losses, accs = [], []
        for task in batch:
            params = self._adapted(task.support_x, task.support_y, 1, True)
            logits = functional_call(self.net, params, (task.query_x,))
            losses.append(F.cross_entropy(logits, task.query_y))
            accs.append((logits.argmax(-1) == task.query_y).float().mean())
        loss = torch.stack(losses).mean()
        if self.noisy:
            loss = loss * (1 + 0.01 * (random.random() + float(np.random.rand())))
        return loss, {"loss": loss.item(), "accuracy": torch.stack(accs).mean().item()}

    def adapt(self, support_x, support_y, steps=None):
        if self.noisy:  # like sampling inner-loop minibatches: validation draws random numbers too
            torch.rand(3), random.random(), np.random.rand()
        params = {k: v.detach() for k, v in self._adapted(support_x, support_y, 1 if steps is None else steps, False).items()}
        return lambda x: functional_call(self.net, params, (x,))


def make_learner(init_seed=0, **kwargs):
    torch.manual_seed(init_seed)
    return TinyMAML(**kwargs)


def params_of(learner):
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer_state(opt_a, opt_b):
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        for key, value in sa["state"][index].items():
            other = sb["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


SETTINGS = dict(steps=12, lr=3e-3, schedule="cosine", grad_clip=1.0, val_every=4, val_episodes=6,
                log_every=4, checkpoint_every=3, progress=False, seed=7)


# --------------------------------------------------------------------------- resume and determinism
def test_resume_is_exact(tmp_path):
    full = Trainer(make_learner(noisy=True), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "full", **SETTINGS)
    history_full = full.fit()

    half = Trainer(make_learner(noisy=True), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "half", **SETTINGS)
    half.fit(until=6)
    assert half.step == 6 and load_checkpoint(tmp_path / "half" / "last.pt")["step"] == 6
    # a different initialisation proves that the weights come from the checkpoint
    resumed = Trainer.resume(tmp_path / "half", make_learner(init_seed=123, noisy=True), BlobTasks(), BlobTasks(seed=99),
                             progress=False)
    assert resumed.step == 6
    history_resumed = resumed.fit()

    assert resumed.step == full.step == 12
    assert_same_tensors(params_of(full.learner), params_of(resumed.learner))
    assert_same_optimizer_state(full.optimizer, resumed.optimizer)
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert without_timing(history_full.rows) == without_timing(history_resumed.rows)
    assert history_full.best == history_resumed.best
    # and the same for the files
    final_full = load_checkpoint(tmp_path / "full" / "last.pt")
    final_resumed = load_checkpoint(tmp_path / "half" / "last.pt")
    assert_same_tensors(final_full["model"], final_resumed["model"])
    assert without_timing(final_full["history"]) == without_timing(final_resumed["history"])


class CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            raise RuntimeError("simulated crash")


def read_rows(path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def test_resume_after_a_crash_matches_and_the_csv_has_no_duplicates(tmp_path):
    full = Trainer(make_learner(noisy=True), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "full", **SETTINGS)
    full.fit()
    crashed = Trainer(make_learner(noisy=True), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "crash",
                      callbacks=[CrashAt(11)], **SETTINGS)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    assert load_checkpoint(tmp_path / "crash" / "last.pt")["step"] == 9
    resumed = Trainer(make_learner(init_seed=5, noisy=True), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "crash",
                      **SETTINGS)
    resumed.fit(resume=True)
    assert_same_tensors(params_of(full.learner), params_of(resumed.learner))
    assert_same_optimizer_state(full.optimizer, resumed.optimizer)
    assert read_rows(tmp_path / "full" / "metrics.csv") == read_rows(tmp_path / "crash" / "metrics.csv")


def test_crash_after_rows_logged_past_the_checkpoint_truncates_them(tmp_path):
    settings = dict(SETTINGS, checkpoint_every=6)
    crashed = Trainer(make_learner(), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "run", callbacks=[CrashAt(10)],
                      **settings)
    with pytest.raises(RuntimeError):
        crashed.fit()
    steps_logged = [int(r["step"]) for r in read_rows(tmp_path / "run" / "metrics.csv")]
    assert 8 in steps_logged  # logged after the step-6 checkpoint
    resumed = Trainer(make_learner(), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "run", **settings)
    resumed.fit(resume=True)
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    keys = [(int(r["step"]), r["split"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert keys == [(4, "train"), (4, "val"), (8, "train"), (8, "val"), (12, "train"), (12, "val")]


def test_same_seed_same_numbers_and_the_seed_matters():
    def run(seed):
        trainer = Trainer(make_learner(noisy=True), BlobTasks(), steps=8, lr=1e-2, progress=False, seed=seed)
        history = trainer.fit()
        return params_of(trainer.learner), [r["loss"] for r in history.train]

    params_a, losses_a = run(3)
    params_b, losses_b = run(3)
    assert_same_tensors(params_a, params_b)
    assert losses_a == losses_b
    params_c, _ = run(4)
    assert not all(torch.equal(params_a[k], params_c[k]) for k in params_a)


def test_validation_does_not_perturb_training():
    def run(val_tasks):
        trainer = Trainer(make_learner(noisy=True), BlobTasks(), val_tasks, steps=8, val_every=2, val_episodes=4,
                          progress=False)
        trainer.fit()
        return params_of(trainer.learner)

    assert_same_tensors(run(None), run(BlobTasks(seed=99)))


# --------------------------------------------------------------------------- non-finite values
class NaNLossAt(TinyMAML):
    def __init__(self, bad_step):
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def meta_loss(self, batch):
        loss, metrics = super().meta_loss(batch)
        if self.calls == self.bad_step:
            loss = loss * float("nan")
            metrics["loss"] = loss.item()
        self.calls += 1
        return loss, metrics


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_parameters():
    torch.manual_seed(0)
    learner = NaNLossAt(3)
    trainer = Trainer(learner, BlobTasks(), steps=10, progress=False)
    snapshots = []
    trainer.callbacks.append(type("Snap", (), {"on_step_end": lambda self, t, s, m: snapshots.append(params_of(t.learner))})())
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3 \(train_tasks\[3\]") as info:
        trainer.fit()
    assert isinstance(info.value, ValueError)
    assert info.value.step == 3 and info.value.tensor == "loss"
    assert trainer.step == 3
    assert_same_tensors(params_of(learner), snapshots[-1])  # the bad update was not applied


class NaNGradAt(TinyMAML):
    def __init__(self, bad_step):
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def meta_backward(self, batch):
        metrics = super().meta_backward(batch)
        if self.calls == self.bad_step:
            self.net[3].weight.grad[1, 2] = float("inf")
        self.calls += 1
        return metrics


def test_nan_gradient_names_the_parameter():
    torch.manual_seed(0)
    trainer = Trainer(NaNGradAt(2), BlobTasks(), steps=10, grad_clip=1.0, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 2 .*'net\.3\.weight' \(shape \(3, 16\)") as info:
        trainer.fit()
    assert info.value.step == 2 and info.value.tensor == "net.3.weight"
    assert "0 NaN and 1 inf of 48 gradient entries" in str(info.value)


# --------------------------------------------------------------------------- best checkpoint, files
class Scripted(MetaLearner):
    """Validation accuracy is scripted by the number of updates so far: best at step 6."""

    SCRIPT = {2: 6, 4: 8, 6: 11, 8: 7, 10: 11}  # correct queries out of 12 after that many updates

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def meta_backward(self, batch):
        loss = (self.w ** 2).sum()
        loss.backward()
        self.updates += 1
        return {"loss": loss.item(), "accuracy": 0.5}

    def predict(self, batch, steps=None):
        right = self.SCRIPT[int(self.updates)]
        y = batch.query_y
        pred = torch.where(torch.arange(y.shape[1]) < right, y, (y + 1) % WAYS)
        return F.one_hot(pred, WAYS).float() + 0 * self.w.sum()


def test_best_checkpoint_is_the_best_validation_step(tmp_path):
    trainer = Trainer(Scripted(), BlobTasks(), BlobTasks(seed=1), steps=10, lr=0.1, val_every=2, val_episodes=3,
                      out=tmp_path, checkpoint_every=None, progress=False)
    history = trainer.fit()
    assert [r["step"] for r in history.val] == [2, 4, 6, 8, 10]
    assert history.best == {"step": 6, "metric": "accuracy", "value": pytest.approx(11 / 12), "mode": "max"}
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 6 and int(best["model"]["updates"]) == 6  # ties (step 10) keep the earlier one
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10
    trainer.load_best()
    assert int(trainer.learner.updates) == 6


def test_best_in_memory_without_out_and_lowest_loss_for_regression():
    class ScriptedRegression(Scripted):
        task_type = "regression"
        MSE = {2: 3.0, 4: 1.0, 6: 2.0}

        def predict(self, batch, steps=None):
            return batch.query_y + math.sqrt(self.MSE[int(self.updates)])

    trainer = Trainer(ScriptedRegression(), LineTasks(), LineTasks(), steps=6, val_every=2, val_episodes=2,
                      progress=False)
    history = trainer.fit()
    assert history.best["step"] == 4 and history.best["metric"] == "loss" and history.best["mode"] == "min"
    assert history.best["value"] == pytest.approx(1.0)
    trainer.load_best()
    assert int(trainer.learner.updates) == 4


def test_csv_rows_and_checkpoint_loads_weights_only(tmp_path):
    trainer = Trainer(make_learner(), BlobTasks(), BlobTasks(seed=3), steps=10, val_every=5, val_episodes=4,
                      log_every=3, out=tmp_path, progress=False)
    trainer.fit()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [int(r["step"]) for r in train] == [3, 6, 9, 10]  # the last window (step 10) is logged too
    assert [int(r["step"]) for r in val] == [5, 10]
    for row in train:
        assert math.isfinite(float(row["loss"])) and 0 <= float(row["accuracy"]) <= 1
        assert float(row["lr"]) == pytest.approx(1e-3) and float(row["tasks_per_s"]) > 0 and float(row["elapsed"]) >= 0
        assert row["ci95"] == ""
    assert float(val[-1]["ci95"]) > 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 10 and state["format"] == "quickstudy.checkpoint"
    assert {"model", "optimizer", "scheduler", "rng", "history", "best", "trainer"} <= state.keys()
    # the final validation row equals a standalone evaluate of the saved weights on the same tasks
    learner = make_learner(init_seed=9)
    learner.load_state_dict(state["model"])
    result = evaluate(learner, BlobTasks(seed=3), episodes=4, progress=False)
    assert float(val[-1]["accuracy"]) == pytest.approx(result.mean)


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    Trainer(make_learner(), BlobTasks(), steps=4, log_every=2, out=tmp_path, progress=False).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    Trainer(make_learner(), BlobTasks(), steps=3, out=tmp_path, progress=False, tensorboard=False).fit()
    again = Trainer(make_learner(), BlobTasks(), steps=3, out=tmp_path, progress=False, tensorboard=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        again.fit()
    again.fit(overwrite=True)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
    with pytest.raises(FileNotFoundError, match="resume='auto'"):
        Trainer(make_learner(), BlobTasks(), steps=3, out=tmp_path / "new", progress=False).fit(resume=True)
    fresh = Trainer(make_learner(), BlobTasks(), steps=3, out=tmp_path / "auto", progress=False, tensorboard=False)
    fresh.fit(resume="auto")
    assert fresh.step == 3


def test_optimizer_and_schedule_choices():
    sgd = Trainer(make_learner(), BlobTasks(), steps=4, lr=0.1, optimizer=functools.partial(torch.optim.SGD, momentum=0.9),
                  schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), progress=False)
    assert isinstance(sgd.optimizer, torch.optim.SGD) and sgd.optimizer.param_groups[0]["momentum"] == 0.9
    history = sgd.fit()
    assert sgd.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    assert [r["lr"] for r in history.train] == [pytest.approx(0.1 * 0.5)]  # lr of the last step of the window
    cosine = Trainer(make_learner(), BlobTasks(), steps=4, optimizer=torch.optim.AdamW, schedule="cosine", progress=False)
    cosine.fit()
    assert cosine.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_of_a_custom_optimizer_asks_for_it(tmp_path):
    Trainer(make_learner(), BlobTasks(), steps=2, optimizer=torch.optim.SGD, out=tmp_path, progress=False,
            tensorboard=False).fit()
    with pytest.raises(ValueError, match="optimizer="):
        Trainer.resume(tmp_path, make_learner(), BlobTasks())
    trainer = Trainer.resume(tmp_path, make_learner(), BlobTasks(), optimizer=torch.optim.SGD, progress=False)
    assert trainer.step == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"optimizer": "adamax2"}, "optimizer must be one of"),
        ({"schedule": "exponential"}, "schedule must be one of"),
        ({"grad_clip": 0}, "grad_clip"),
        ({"val_every": 2.5}, "val_every"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Trainer(make_learner(), BlobTasks(), **kwargs)


def test_meta_backward_without_gradients_is_reported():
    class Detached(TinyMAML):
        def meta_backward(self, batch):
            return {"loss": 1.0}

    with pytest.raises(ValueError, match="no gradient on any parameter at step 0"):
        Trainer(Detached(), BlobTasks(), steps=2, progress=False).fit()


def test_report_writes_plots_and_markdown(tmp_path):
    Trainer(make_learner(), BlobTasks(), BlobTasks(seed=3), steps=8, val_every=4, val_episodes=4, log_every=2,
            out=tmp_path, progress=False, tensorboard=False).fit()
    (tmp_path / "config.yaml").write_text("algorithm: maml\nways: 3\n")
    result = evaluate(make_learner(), BlobTasks(seed=5), episodes=6, progress=False)
    (tmp_path / "eval.json").write_text(result.to_json())
    written = make_report(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "loss.png", "report.md"]
    for png in ("accuracy.png", "loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "algorithm: maml" in text
    assert "best validation accuracy" in text and "at step" in text
    assert f"{result.mean:.4g}" in text and "6 tasks" in text
    # an empty directory still gets a report, saying what is missing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert [p.name for p in make_report(empty)] == ["report.md"]
    assert "No metrics.csv" in (empty / "report.md").read_text()


# --------------------------------------------------------------------------- with the library's algorithms
def _library():
    algorithms = pytest.importorskip("quickstudy.algorithms", reason="quickstudy.algorithms is not importable")
    models = pytest.importorskip("quickstudy.models", reason="quickstudy.models is not importable")
    if not hasattr(algorithms, "MAML") or not hasattr(models, "MLP"):
        pytest.skip("quickstudy.algorithms.MAML or quickstudy.models.MLP is not available")
    return algorithms, models


def test_library_maml_resumes_exactly_and_evaluates(tmp_path):
    algorithms, models = _library()

    def build(seed=0):
        torch.manual_seed(seed)
        return algorithms.MAML(models.MLP(DIM, WAYS, hidden=(16,)), inner_lr=0.5, inner_steps=1, strategy="loop")

    full = Trainer(build(), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "full", **SETTINGS)
    full.fit()
    half = Trainer(build(), BlobTasks(), BlobTasks(seed=99), out=tmp_path / "half", **SETTINGS)
    half.fit(until=5)
    resumed = Trainer.resume(tmp_path / "half", build(seed=1), BlobTasks(), BlobTasks(seed=99), progress=False)
    resumed.fit()
    assert_same_tensors(params_of(full.learner), params_of(resumed.learner))
    assert_same_optimizer_state(full.optimizer, resumed.optimizer)
    result = evaluate(full.learner, BlobTasks(seed=5), episodes=10, progress=False)
    assert result.n == 10 and 0 <= result.mean <= 1 and result.ci95 > 0


def test_library_maml_on_sinusoids_regression_steps():
    algorithms, models = _library()
    from quickstudy.tasks import Sinusoid

    torch.manual_seed(0)
    maml = algorithms.MAML(models.MLP(1, 1, hidden=(20, 20)), inner_lr=0.01, inner_steps=1, loss="mse", strategy="loop")
    trainer = Trainer(maml, Sinusoid(shots=5, queries=5, batch_size=4), Sinusoid(shots=5, queries=5, batch_size=4, seed=1),
                      steps=6, val_every=3, val_episodes=4, progress=False)
    history = trainer.fit()
    assert history.best["metric"] == "loss" and history.best["mode"] == "min"
    curve = evaluate_regression_steps(maml, Sinusoid(shots=5, queries=5, batch_size=4, seed=2), episodes=6, max_steps=3,
                                      progress=False)
    assert [r.steps for r in curve] == [0, 1, 2, 3]
    assert all(r.metric == "mse" and r.n == 6 and math.isfinite(r.mean) for r in curve)
