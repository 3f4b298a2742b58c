"""Small runs of every meta-learner, trained by one process or by real torch.distributed (gloo) processes.

Used by tests/test_distributed.py: :func:`fit` trains one spec in this process; :func:`worker` is the body of
each spawned rank (``torch.multiprocessing`` pickles it by name, so it lives in a module, not in the test).
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import quickstudy as qs
from quickstudy.data import ArrayDataset
from quickstudy.models import MLP
from quickstudy.training import Callback
from quickstudy.training.distributed import DataParallel, ReplicasDivergedError

CLASSES, FEATURES = 12, 4


def blobs(dtype: torch.dtype) -> ArrayDataset:
    """12 classes of 10 points in 4-d around class-specific centres (features: kept in ``dtype``)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, FEATURES, generator=g, dtype=torch.float64) * 2
    y = torch.arange(CLASSES).repeat_interleave(10)
    x = centres[y] + torch.randn(len(y), FEATURES, generator=g, dtype=torch.float64)
    return ArrayDataset(x.to(dtype), y)


def learner(name: str, dtype: torch.dtype):
    return _learner(name, dtype).to(dtype)  # FineTune's head and Meta-SGD's step sizes too


def _learner(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    if name in ("protonet", "finetune"):  # an embedding ending in ReLU: no parameter with a zero gradient (where
        model = MLP(in_features=FEATURES, out_features=None, hidden=[16, 8])  # Adam would amplify rounding noise)
    else:
        model = MLP(in_features=FEATURES, out_features=3, hidden=[16])
    if name == "maml":
        return qs.MAML(model, inner_lr=0.3, inner_steps=2)
    if name == "fomaml":
        return qs.FOMAML(model, inner_lr=0.3, inner_steps=2)
    if name == "metasgd":
        return qs.MetaSGD(model, inner_lr=0.3, inner_steps=1)
    if name == "anil":
        return qs.ANIL(model, inner_lr=0.3, inner_steps=2)
    if name == "reptile":
        return qs.Reptile(model, inner_lr=0.05, inner_steps=3)
    if name == "protonet":
        return qs.ProtoNet(model)
    if name == "finetune":
        return qs.FineTune(model, num_train_classes=CLASSES, feature_dim=8)
    raise ValueError(name)


class KillAt(Callback):
    """SIGKILL this process (no clean-up, as a crash or an OOM kill) once ``step`` updates are done."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_end(self, trainer, step, metrics) -> None:
        if step == self.step and dist.is_initialized() and dist.get_rank() == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(spec: dict, distributed: bool = False) -> qs.Trainer:
    """Train ``spec`` (algorithm, dtype, steps, optional out / resume / kill) and return the trainer."""
    dtype = getattr(torch, spec.get("dtype", "float64"))
    data = blobs(dtype)
    # 5 tasks per meta-batch: 3 + 2 on two processes, 2 + 2 + 1 on three (uneven shares)
    train = qs.EpisodeSampler(data, ways=3, shots=2, queries=3, batch_size=5, seed=1)
    val = qs.EpisodeSampler(data, ways=3, shots=2, queries=3, batch_size=4, seed=2)
    callbacks = [KillAt(*spec["kill"])] if spec.get("kill") else []
    trainer = qs.Trainer(learner(spec["algorithm"], dtype), train, val_tasks=val, steps=spec.get("steps", 4), lr=0.01,
                         val_every=2, val_episodes=7, out=spec.get("out"), checkpoint_every=2, log_every=1,
                         progress=False, tensorboard=False, callbacks=callbacks, distributed=distributed,
                         cpu_caching_allocator=False)
    trainer.fit(resume=spec.get("resume", False))
    return trainer


def rl_batches(outer: str):
    """A float64 MAML-RL learner and one meta-iteration's episodes of 5 navigation tasks (sampled in float32 with a
    fixed generator, so every process builds the same ones)."""
    from quickstudy.rl import GaussianMLPPolicy, MAMLRL
    from quickstudy.rl.families import make_family
    from quickstudy.rl.rollout import process_episodes, rollout

    family = make_family("navigation2d", horizon=8)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(family.obs_dim, family.action_dim, hidden=[8])
    g = torch.Generator().manual_seed(3)
    tasks = family.sample_tasks(5, g)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    train = process_episodes(rollout(family, tasks, policy, theta, 3, g, per_task=False), 0.99, 1.0)
    probe = MAMLRL(policy, inner_lr=0.1, outer=outer)
    valid = process_episodes(rollout(family, tasks, policy, probe.adapt([train]), 3, g, per_task=True), 0.99, 1.0)
    policy.double()
    as64 = lambda e: replace(e, **{f: getattr(e, f).double() for f in ("obs", "actions", "rewards", "mask", "logp",
                                                                        "advantages")})  # noqa: E731
    # damping 0.1: conjugate gradient on this tiny policy's near-singular Fisher matrix (damping 1e-5) amplifies
    # the rounding of its products to 1e-5 in 10 iterations, in one process as in two
    learner = MAMLRL(policy, inner_lr=0.1, outer=outer, ppo_epochs=2, cg_damping=0.1)
    return learner, [as64(train)], as64(valid)


def tasks_of(episodes, start: int, stop: int):
    return replace(episodes, **{f: getattr(episodes, f)[start:stop] for f in ("obs", "actions", "rewards", "mask",
                                                                               "logp", "advantages")})


def rl_step(outer: str, parallel: DataParallel | None = None) -> dict:
    """One outer step on the 5 tasks (this process's share of them, with ``parallel``): the new policy weights."""
    learner, trains, valid = rl_batches(outer)
    if parallel is not None:
        start, stop = parallel.bounds(valid.num_tasks)
        trains, valid = [tasks_of(t, start, stop) for t in trains], tasks_of(valid, start, stop)
        learner.reduce_mean = lambda value: parallel.weighted_mean_(value, (stop - start) / 5)
    stats = learner.step(trains, valid)
    return {"model": learner.policy.state_dict(), "stats": stats}


RL_CONFIG = {"kind": "rl", "seed": 0, "env": {"name": "navigation2d", "horizon": 8}, "policy": {"hidden": [8]},
             "train": {"iterations": 2, "meta_batch": 3, "episodes_per_task": 2, "checkpoint_every": 1},
             "eval": {"tasks": 2, "episodes_per_task": 2, "max_steps": 1}}


def rl_train(out: str) -> dict:
    """Two meta-iterations of the RL kind through the Trainer (3 tasks: 2 + 1 per process)."""
    from quickstudy.rl import kind
    from quickstudy.rl.config import load_rl_config

    config, _ = load_rl_config(raw=RL_CONFIG)
    kind.train(config, Path(out), progress=False)
    dist.barrier()  # rank 0 has written the last checkpoint
    return torch.load(Path(out) / "last.pt", weights_only=True)


def scores(distributed: bool = False) -> list[float]:
    """Accuracy of each of 11 test tasks (batches of 4: shares 2 + 2, 2 + 2, 2 + 1 on two processes)."""
    tasks = qs.EpisodeSampler(blobs(torch.float64), ways=3, shots=2, queries=3, batch_size=4, seed=5)
    return qs.evaluate(learner("maml", torch.float64), tasks, episodes=11, progress=False,
                       distributed=distributed).per_episode


def too_small() -> str:
    """What training meta-batches of one task on two processes says."""
    tasks = qs.EpisodeSampler(blobs(torch.float64), ways=3, shots=2, queries=3, batch_size=1, seed=0)
    try:
        qs.Trainer(learner("maml", torch.float64), tasks, steps=2, progress=False, distributed=True).fit()
    except ValueError as error:
        return str(error)
    return "no error"


def diverge(rank: int) -> str:
    """Change one weight on rank 1 only and return what check_in_sync says on this rank."""
    model = learner("maml", torch.float64)
    if rank == 1:
        with torch.no_grad():
            model.model.head.bias[0] += 1e-12
    try:
        DataParallel().check_in_sync(model, step=3)
    except ReplicasDivergedError as error:
        return str(error)
    return "no error"


def worker(rank: int, world_size: int, port: int, specs: list[dict], results: str) -> None:
    """One rank: join the gloo group, run every spec (train it, or a probe), save what it gave."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for number, spec in enumerate(specs):
            if spec.get("probe") == "diverge":
                result = {"message": diverge(rank)}
            elif spec.get("probe") == "too_small":
                result = {"message": too_small()}
            elif spec.get("probe") == "evaluate":
                result = {"per_episode": scores(distributed=True)}
            elif "rl_step" in spec:
                result = rl_step(spec["rl_step"], DataParallel())
            elif "rl_train" in spec:
                result = rl_train(spec["rl_train"])
            else:
                trainer = fit(spec, distributed=True)
                result = {"model": trainer.learner.state_dict(), "history": trainer.history.rows}
            torch.save(result, Path(results) / f"spec{number}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()
