"""Time to accuracy: Omniglot 5-way 1-shot MAML, quickstudy against learn2learn's own MAML recipe, one after the
other on the same machine, the same Conv4, the same hyperparameters, the same tasks; test accuracy against
minutes of training.

    .venv/bin/python -m bench.time_to_accuracy                     # 30 training minutes each, one thread
    .venv/bin/python -m bench.time_to_accuracy --minutes 5 --eval-every 60 --episodes 200
    .venv/bin/python -m bench.time_to_accuracy --plot-only         # table and plot from the last runs' JSON

The recipe is learn2learn 0.2.0's ``examples/vision/maml_omniglot.py``: 5 ways, 1 shot, one query per class
(its tasks hold 2 x shots examples per class, half to adapt on, half to evaluate), meta-batch 32, one inner
SGD step of 0.5, second order, Adam 0.003 on the mean task loss. learn2learn runs it as that example does
(``MAML.clone()``, ``adapt``, a backward per task, the gradients divided by the meta-batch); quickstudy as its
README does (``qs.MAML(model, inner_lr=0.5, inner_steps=1)``, ``meta_backward``, the caching CPU allocator
that ``Trainer.fit`` turns on). The model of both is ``quickstudy.models.conv4_sequential()`` (the user's
Conv4: ``nn.Sequential`` of Conv2d, BatchNorm2d with batch statistics, ReLU, MaxPool2d) from the same initial
weights, and the training tasks are the same: ``qs.EpisodeSampler`` over ``qs.data.Omniglot(split="train")``
(Vinyals split), seed 0, batch i at step i, in both processes (quickstudy is installed in the peers' venv).

Clock: the training process's CPU time (``time.process_time``) over the meta-steps only, on one thread
(``--threads``), so that other processes on a shared machine disturb it little; ``--clock wall`` for a quiet
machine. Every ``--eval-every`` seconds of that clock the weights are scored on the same ``--episodes`` test
episodes (5-way 1-shot, 15 queries, one inner step of 0.5, ``qs.evaluate``; not counted in the clock). The two
runs go one after the other, the same ``nice`` level. Output: ``docs/bench/time_to_accuracy.{json,md,png}``
(minutes to 90% and 95% test accuracy, curves).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "docs", "bench", "time_to_accuracy")
RECIPE = {"ways": 5, "shots": 1, "queries": 1, "meta_batch": 32, "inner_lr": 0.5, "inner_steps": 1, "meta_lr": 0.003}
TARGETS = (0.90, 0.95)


# ----------------------------------------------------------------------------- one library's run (a worker)


def _tasks(threads: int):
    import quickstudy as qs

    train = qs.EpisodeSampler(qs.data.Omniglot(split="train"), ways=RECIPE["ways"], shots=RECIPE["shots"],
                              queries=RECIPE["queries"], batch_size=RECIPE["meta_batch"], seed=0)
    test = qs.EpisodeSampler(qs.data.Omniglot(split="test"), ways=RECIPE["ways"], shots=RECIPE["shots"], queries=15,
                             batch_size=50, seed=1)
    return train, test


def _score(model, test, episodes: int) -> float:
    """Test accuracy of ``model``'s weights, scored by quickstudy's evaluator for both libraries."""
    import quickstudy as qs

    scorer = qs.MAML(copy.deepcopy(model), inner_lr=RECIPE["inner_lr"], inner_steps=RECIPE["inner_steps"])
    return float(qs.evaluate(scorer, test, episodes=episodes, progress=False).mean)


def _quickstudy_step(model):
    import torch

    import quickstudy as qs
    from quickstudy.kernels.cpu_allocator import enable_caching_allocator

    enable_caching_allocator()  # as Trainer.fit does on a CPU device
    maml = qs.MAML(model, inner_lr=RECIPE["inner_lr"], inner_steps=RECIPE["inner_steps"])
    opt = torch.optim.Adam(maml.parameters(), RECIPE["meta_lr"])

    def step(batch) -> float:
        opt.zero_grad()
        metrics = maml.meta_backward(batch)
        opt.step()
        return metrics["loss"]

    return step


def _learn2learn_step(model):
    import torch
    import torch.nn.functional as F

    from bench.peers import _stubs

    _stubs.install_learn2learn_stubs()
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=RECIPE["inner_lr"], first_order=False)
    opt = torch.optim.Adam(maml.parameters(), RECIPE["meta_lr"])

    def step(batch) -> float:
        opt.zero_grad()
        total = 0.0
        for i in range(batch.batch_size):  # the recipe's fast_adapt, task by task
            learner = maml.clone()
            for _ in range(RECIPE["inner_steps"]):
                learner.adapt(F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
            loss = F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i])
            loss.backward()
            total += loss.item()
        for p in maml.parameters():  # the recipe averages the summed task gradients
            p.grad.data.mul_(1.0 / batch.batch_size)
        opt.step()
        return total / batch.batch_size

    return step


def run_worker(lib: str, minutes: float, eval_every: float, episodes: int, threads: int, clock: str, out: str) -> None:
    import torch

    from quickstudy.models import conv4_sequential

    torch.set_num_threads(threads)
    train, test = _tasks(threads)
    torch.manual_seed(0)
    model = conv4_sequential(in_channels=1, ways=RECIPE["ways"])
    step = (_quickstudy_step if lib == "quickstudy" else _learn2learn_step)(model)
    read_clock = time.process_time if clock == "cpu" else time.perf_counter
    points = [{"step": 0, "seconds": 0.0, "accuracy": _score(model, test, episodes)}]
    print(f"{lib}: step 0, accuracy {points[-1]['accuracy']:.4f}", flush=True)
    trained, index, next_eval, loss = 0.0, 0, eval_every, float("nan")
    while trained < minutes * 60:
        batch = train[index]
        started = read_clock()
        loss = step(batch)
        trained += read_clock() - started
        index += 1
        if trained >= next_eval or trained >= minutes * 60:
            points.append({"step": index, "seconds": trained, "loss": loss,
                           "accuracy": _score(model, test, episodes)})
            next_eval += eval_every
            print(f"{lib}: step {index}, {trained / 60:.1f} min, loss {loss:.3f}, accuracy "
                  f"{points[-1]['accuracy']:.4f} (load {os.getloadavg()[0]:.1f})", flush=True)
    with open(out, "w") as handle:
        json.dump({"lib": lib, "clock": clock, "threads": threads, "episodes": episodes, "recipe": RECIPE,
                   "points": points, "torch": torch.__version__, "python": sys.executable}, handle, indent=1)


# ----------------------------------------------------------------------------- the driver


def minutes_to(points: list[dict], target: float) -> float | None:
    """Training minutes at the first evaluation at or above ``target`` (None: never reached)."""
    return next((p["seconds"] / 60 for p in points if p["accuracy"] >= target), None)


def report(runs: dict, out: str, machine: dict) -> str:
    lines = ["| library | meta-steps | training minutes | final test accuracy | minutes to 90% | minutes to 95% |",
             "|---|---|---|---|---|---|"]
    for lib, run in runs.items():
        points = run["points"]
        cells = [f"{minutes_to(points, t):.1f}" if minutes_to(points, t) is not None else "not reached"
                 for t in TARGETS]
        lines.append(f"| {lib} | {points[-1]['step']} | {points[-1]['seconds'] / 60:.1f} | "
                     f"{100 * points[-1]['accuracy']:.2f}% | {cells[0]} | {cells[1]} |")
    clock = next(iter(runs.values()))["clock"]
    lines.append("")
    lines.append(f"Clock: {'process CPU time of the training steps' if clock == 'cpu' else 'wall time'}, "
                 f"{next(iter(runs.values()))['threads']} thread(s); machine: {machine.get('cpu_model')}, "
                 f"load average before {machine.get('load_before')}.")
    text = "\n".join(lines) + "\n"
    with open(out + ".md", "w") as handle:
        handle.write(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lib, run in runs.items():
            ax.plot([p["seconds"] / 60 for p in run["points"]], [100 * p["accuracy"] for p in run["points"]],
                    marker=".", label=lib)
        for target in TARGETS:
            ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"training minutes ({'process CPU time' if clock == 'cpu' else 'wall time'})")
        ax.set_ylabel("test accuracy (%), Omniglot 5-way 1-shot")
        ax.set_ylim(20, 100)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out + ".png", dpi=120)
    except ImportError:
        pass
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training minutes per library (the clock)")
    parser.add_argument("--eval-every", type=float, default=120.0, help="seconds of the clock between evaluations")
    parser.add_argument("--episodes", type=int, default=500, help="test episodes per evaluation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--libs", default="quickstudy,learn2learn")
    parser.add_argument("--peers-python", default=os.path.join(ROOT, ".peers", "venv", "bin", "python"))
    parser.add_argument("--out", default=DEFAULT_OUT, help="prefix of the .json, .md and .png")
    parser.add_argument("--plot-only", action="store_true", help="only the table and plot from the JSON at --out")
    parser.add_argument("--worker", choices=("quickstudy", "learn2learn"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.minutes, args.eval_every, args.episodes, args.threads, args.clock,
                   args.worker_out)
        return 0
    if args.plot_only:
        with open(args.out + ".json") as handle:
            saved = json.load(handle)
        print(report(saved["runs"], args.out, saved["machine"]))
        return 0
    from bench.peers.machine import machine_info

    machine = dict(machine_info(), load_before=os.getloadavg()[:3], nice=os.nice(0))
    runs = {}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for lib in args.libs.split(","):
        python = sys.executable if lib == "quickstudy" else args.peers_python
        part = f"{args.out}.{lib}.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        subprocess.run([python, "-m", "bench.time_to_accuracy", "--worker", lib, "--worker-out", part,
                        "--minutes", str(args.minutes), "--eval-every", str(args.eval_every), "--episodes",
                        str(args.episodes), "--threads", str(args.threads), "--clock", args.clock],
                       cwd=ROOT, env=env, check=True)
        with open(part) as handle:
            runs[lib] = json.load(handle)
    machine["load_after"] = os.getloadavg()[:3]
    command = "python -m bench.time_to_accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(args.out + ".json", "w") as handle:
        json.dump({"command": command, "machine": machine, "runs": runs}, handle, indent=1)
    print(report(runs, args.out, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
