"""Data-parallel meta-training with real processes (torch.distributed, gloo on CPU).

Known answers: P processes sharing each meta-batch give the parameters, the logged metrics and the validation
results of one process training on the whole meta-batch (float64, to 1e-10); a run whose rank is killed resumes
on another number of processes and ends where the uninterrupted one-process run ends; the torchrun command
line trains one run folder.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import _distributed_worker as runs
from quickstudy import EpisodeSampler
from quickstudy.training.distributed import data_parallel_for, shard_bounds

SRC = Path(__file__).resolve().parent.parent / "src"
TESTS = Path(__file__).resolve().parent
ALGORITHMS = ["maml", "protonet", "fomaml", "metasgd", "anil", "reptile", "finetune"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(world_size: int, specs: list[dict], results: Path) -> None:
    """Run ``specs`` on ``world_size`` fresh processes (spawned: nothing inherited but the arguments)."""
    mp.start_processes(runs.worker, args=(world_size, free_port(), specs, str(results)), nprocs=world_size,
                       start_method="spawn")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def numbers(rows: list[dict]) -> list[dict]:
    """The logged values that must not depend on the number of processes (not times or rates)."""
    return [{k: v for k, v in r.items() if k not in ("elapsed", "tasks_per_s") and v is not None} for r in rows]


def assert_rows_close(got: list[dict], want: list[dict], tolerance: float) -> None:
    got, want = numbers(got), numbers(want)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in g:
            if isinstance(w[key], float):
                assert abs(g[key] - w[key]) <= tolerance, (g["step"], g["split"], key, g[key], w[key])
            else:
                assert g[key] == w[key]


# --------------------------------------------------------------------------- no processes needed
@pytest.mark.parametrize("count", [1, 2, 5, 7, 16])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_task_once_in_order(count, world_size):
    if count < world_size:
        return
    shares = [shard_bounds(count, rank, world_size) for rank in range(world_size)]
    assert [i for start, stop in shares for i in range(start, stop)] == list(range(count))
    sizes = [stop - start for start, stop in shares]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_samplers_batch_slice_is_the_slice_of_its_batch():
    sampler = EpisodeSampler(runs.blobs(torch.float64), ways=3, shots=2, queries=3, batch_size=5, seed=4)
    whole = sampler[6]
    for start, stop in [(0, 3), (3, 5), (2, 3)]:
        part = sampler.batch_slice(6, start, stop)
        for name in ("support_x", "support_y", "query_x", "query_y", "classes", "episode_ids"):
            assert torch.equal(getattr(part, name), getattr(whole, name)[start:stop]), name


def test_distributed_without_a_launcher_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert data_parallel_for("auto", "cpu") is None  # a plain process trains alone
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        data_parallel_for(True, "cpu")
    with pytest.raises(ValueError, match="distributed must be True, False, 'auto'"):
        data_parallel_for("yes", "cpu")


def test_a_kind_that_runs_on_one_process_is_refused_under_torchrun(monkeypatch):
    from types import SimpleNamespace

    from quickstudy import experiment
    from quickstudy.runs import _check_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="train: runs of kind 'text' use one process, but torchrun started 2"):
        _check_processes(SimpleNamespace(NAME="text"), "train")
    _check_processes(experiment, "train")  # the episodes kind shares its work
    monkeypatch.setenv("WORLD_SIZE", "1")
    _check_processes(SimpleNamespace(NAME="text"), "train")  # torchrun with one process: nothing to share


# --------------------------------------------------------------------------- 2 processes = 1 process
@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Every algorithm in float64, MAML and ProtoNet in float32, and a divergence probe, on 2 processes."""
    specs = [{"algorithm": name} for name in ALGORITHMS]
    specs += [{"algorithm": "maml", "dtype": "float32"}, {"algorithm": "protonet", "dtype": "float32"}]
    specs += [{"probe": "diverge"}, {"probe": "evaluate"}, {"probe": "too_small"}, {"rl_step": "trpo"},
              {"rl_step": "ppo"}]
    results = tmp_path_factory.mktemp("two_processes")
    specs += [{"rl_train": str(results / "rl")}]
    spawn(2, specs, results)
    load = lambda number, rank: torch.load(results / f"spec{number}-rank{rank}.pt")  # noqa: E731
    return {(tuple(sorted(spec.items()))): (load(n, 0), load(n, 1)) for n, spec in enumerate(specs)}


def key(**spec) -> tuple:
    return tuple(sorted(spec.items()))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_processes_train_what_one_process_trains_in_float64(two_process_runs, algorithm):
    """4 meta-steps of 5 tasks (3 + 2 per process), validation on 7 tasks (batches of 4: shares 2+2 and 2+1)."""
    rank0, rank1 = two_process_runs[key(algorithm=algorithm)]
    alone = runs.fit({"algorithm": algorithm})
    assert max_difference(rank0["model"], alone.learner.state_dict()) < 1e-10
    assert_rows_close(rank0["history"], alone.history.rows, 1e-10)  # train loss/accuracy and validation results
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])  # bit for bit


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_float32_differs_from_one_process_by_rounding_only(two_process_runs, algorithm):
    rank0, rank1 = two_process_runs[key(algorithm=algorithm, dtype="float32")]
    alone = runs.fit({"algorithm": algorithm, "dtype": "float32"})
    exact = runs.fit({"algorithm": algorithm, "dtype": "float64"})
    difference = max_difference(rank0["model"], alone.learner.state_dict())
    float32_error = max_difference(alone.learner.state_dict(), exact.learner.state_dict())
    print(f"{algorithm} float32: largest parameter difference 2 processes vs 1: {difference:.3g}; "
          f"1 process float32 vs float64: {float32_error:.3g}")
    assert difference <= max(1e-6, float32_error)  # no further from one process than float32 is from float64
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])


def test_an_evaluation_split_over_two_processes_scores_every_episode_in_order(two_process_runs):
    rank0, rank1 = two_process_runs[key(probe="evaluate")]
    alone = runs.scores()
    assert len(alone) == 11 and len(set(alone)) > 3  # distinct scores: an order mix-up would show
    assert rank0["per_episode"] == pytest.approx(alone, abs=1e-12)
    assert rank1["per_episode"] == rank0["per_episode"]  # gathered on every rank


def test_a_meta_batch_smaller_than_the_processes_is_refused_on_every_rank(two_process_runs):
    for result in two_process_runs[key(probe="too_small")]:
        assert result["message"] == ("train_tasks[0] holds 1 task: a meta-batch cannot be split over 2 processes "
                                     "(each needs at least one task); use a meta-batch of at least 2 tasks or fewer "
                                     "processes")


def test_a_divergent_rank_is_reported_on_every_rank(two_process_runs):
    rank0, rank1 = two_process_runs[key(probe="diverge")]
    for result in (rank0, rank1):
        assert "after step 3, rank 1 holds different values than rank 0 in 'model.head.bias'" in result["message"]


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_the_rl_outer_step_on_two_processes_is_the_one_process_step(two_process_runs, outer):
    """5 navigation tasks, 3 + 2 per process: TRPO's surrogate, KL, gradient and Fisher-vector products (PPO's
    gradients) averaged across the processes give the single-process step."""
    rank0, rank1 = two_process_runs[key(rl_step=outer)]
    alone = runs.rl_step(outer)
    before = runs.rl_batches(outer)[0].policy.state_dict()
    assert max_difference(alone["model"], before) > 1e-3  # the step moved the policy
    assert max_difference(rank0["model"], alone["model"]) < 1e-10
    for name in ("surrogate", "surrogate_gain", "kl", "ls_steps"):
        assert rank0["stats"][name] == pytest.approx(alone["stats"][name], rel=1e-8, abs=1e-12), name
    assert all(torch.equal(rank0["model"][k], rank1["model"][k]) for k in rank0["model"])


def test_the_rl_kind_trains_on_two_processes(two_process_runs):
    last, _ = two_process_runs[[k for k in two_process_runs if k[0][0] == "rl_train"][0]]
    assert last["step"] == 2
    rows = [r for r in last["history"] if r["split"] == "train"]
    # env steps of both shares (2 + 1 tasks), each with 2 episodes of 8 steps before and after adaptation
    assert [r["env_steps"] for r in rows] == [3 * 2 * 8 * 2] * 2


# --------------------------------------------------------------------------- crash, then resume elsewhere
def test_a_run_killed_on_two_processes_resumes_on_three_and_matches_one_process(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(mp.ProcessExitedException):  # rank 1 is SIGKILLed after step 5 (last.pt: step 4)
        spawn(2, [{"algorithm": "maml", "steps": 8, "out": str(out), "kill": (1, 5)}], tmp_path)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    spawn(3, [{"algorithm": "maml", "steps": 8, "out": str(out), "resume": True}], tmp_path)  # 2 + 2 + 1 tasks
    resumed = torch.load(tmp_path / "spec0-rank0.pt")
    alone = runs.fit({"algorithm": "maml", "steps": 8})
    assert max_difference(resumed["model"], alone.learner.state_dict()) < 1e-10
    assert max_difference(torch.load(out / "last.pt", weights_only=True)["model"], alone.learner.state_dict()) < 1e-10
    assert_rows_close(resumed["history"], alone.history.rows, 1e-10)
    with open(out / "metrics.csv") as handle:  # one writer: each step logged once, nothing from the dead run
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), r["split"]) for r in rows] == [(r["step"], r["split"]) for r in alone.history.rows]


# --------------------------------------------------------------------------- the command line
CONFIG = """\
name: torchrun-sinusoid
seed: 0
data: {dataset: sinusoid}
task: {shots: 5, queries: 5, meta_batch: 5}
model: {name: mlp, in_features: 1, out_features: 1, hidden: [16, 16]}
algorithm: {name: maml, inner_lr: 0.01, inner_steps: 1}
train: {steps: 4, lr: 0.001, val_every: 2, val_episodes: 7, checkpoint_every: 2, log_every: 1}
eval: {episodes: 9, batch_size: 4, max_steps: 2, inner_steps: 1}
"""


def test_torchrun_trains_and_evaluates_one_run_folder(tmp_path):
    config = tmp_path / "sinusoid.yaml"
    config.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               QUICKSTUDY_THREADS="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
               "--max-restarts=0", "-m", "quickstudy", "train", str(config), "--out", str(tmp_path / "two"),
               "--quiet", "--eval", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # one JSON object: rank 0 alone prints
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["step"] == 4

    from quickstudy.cli import main

    assert main(["train", str(config), "--out", str(tmp_path / "one"), "--quiet", "--eval", "--json"]) == 0
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert max_difference(two["model"], one["model"]) < 1e-6  # float32: summation order only
    alone = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert printed["eval"]["mean"] == pytest.approx(alone["mean"], rel=1e-5)  # 9 test tasks scored as 5 + 4
    with open(tmp_path / "two" / "metrics.csv") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["1", "2", "2", "3", "4", "4"]


def test_the_distributed_bench_runs_and_writes_its_json(tmp_path):
    """bench/distributed.py end to end on its smallest setting (one process, one timed step): the numbers are
    not checked, only that the script the lead reruns still works."""
    out = tmp_path / "distributed.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "bench.distributed", "--procs", "1",
                           "--no-threads", "--meta-batch", "2", "--warmup", "1", "--steps", "1", "--out", str(out)],
                          env=env, cwd=SRC.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    point = json.loads(out.read_text())["points"][0]
    assert point["mode"] == "processes" and point["P"] == 1 and point["tasks_per_s"] > 0
