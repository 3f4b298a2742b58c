"""Fault injection with real processes: ``kill -9`` a training at random steps several times, resume each time,
and the run ends bit for bit where an uninterrupted one does; a second process is refused while a folder is
held, and takes it over once its holder is dead; a damaged checkpoint is refused.

The kill steps are drawn at random; set ``QUICKSTUDY_FAULT_SEED`` to replay a failure (the seed is in every
assertion message)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quickstudy.training import load_checkpoint

from _runs import cli, write_config

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("QUICKSTUDY_FAULT_SEED", random.randrange(1 << 30)))
STEPS = 30


@pytest.fixture(autouse=True)
def one_thread_everywhere(monkeypatch):
    """Every process (this one and the children) runs one intra-op thread, as the bit-for-bit claim assumes."""
    monkeypatch.setenv("QUICKSTUDY_THREADS", "1")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "QUICKSTUDY_THREADS": "1"}


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quickstudy", *map(str, argv)], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_step(run: Path) -> int:
    """The last training step in metrics.csv (0 when there is none yet)."""
    try:
        rows = (run / "metrics.csv").read_text().splitlines()[1:]
    except FileNotFoundError:
        return 0
    steps = [int(r.split(",")[0]) for r in rows if ",train," in r and r.split(",")[0].isdigit()]
    return max(steps, default=0)


def kill_at_step(process: subprocess.Popen, run: Path, step: int, rng: random.Random) -> None:
    """SIGKILL ``process`` once it has logged ``step`` (and a random few milliseconds more, to land anywhere in
    the next step or checkpoint write)."""
    deadline = time.monotonic() + 600  # a guard against a hung child, not a measurement
    while logged_step(run) < step:
        assert process.poll() is None, f"seed {SEED}: the child ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"seed {SEED}: step {step} never came"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.05))
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def losses(run: Path) -> list[str]:
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [",".join(r.split(",")[:5]) for r in rows]  # step, split, loss, accuracy, ci95 (not the timings)


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, train={"steps": STEPS, "val_every": 10, "checkpoint_every": 1, "log_every": 1})


def test_kill_9_at_random_steps_then_resume_is_bit_identical(config, tmp_path, capsys):
    rng = random.Random(SEED)
    kills = sorted(rng.sample(range(2, STEPS - 2), 3))
    run = tmp_path / "killed"
    process = start("train", config, "--out", run, "--quiet")
    for index, step in enumerate(kills):
        kill_at_step(process, run, step, rng)
        if index + 1 < len(kills):
            process = start("resume", run, "--quiet")
    code, _, err = cli(capsys, "resume", run, "--quiet")
    assert code == 0, f"seed {SEED}, kills at {kills}: {err}"

    whole = tmp_path / "whole"
    assert cli(capsys, "train", config, "--out", whole, "--quiet")[0] == 0
    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(run / name), load_checkpoint(whole / name)
        for key in ("step", "model", "optimizer", "best"):
            assert tensors_equal(got[key], want[key]), f"seed {SEED}, kills at {kills}: {name} {key} differs"
    assert losses(run) == losses(whole), f"seed {SEED}, kills at {kills}"
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    assert leftovers == [], f"seed {SEED}, kills at {kills}: stray files {leftovers}"


def test_a_second_process_is_refused_then_takes_over_a_dead_holders_folder(config, tmp_path, capsys):
    run = tmp_path / "held"
    holder = start("train", config, "--out", run, "--quiet", "train.steps=100000")
    deadline = time.monotonic() + 600
    while logged_step(run) < 2:
        assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read()
        time.sleep(0.01)
    try:
        for argv in (["resume", run, "--quiet"], ["train", config, "--out", run, "--overwrite", "--quiet"],
                     ["eval", run]):
            code, _, err = cli(capsys, *argv)
            assert code == 2 and f"in use by process {holder.pid}" in err, err
        second = subprocess.run([sys.executable, "-m", "quickstudy", "resume", str(run), "--quiet"],
                                env=child_env(), capture_output=True, text=True)
        assert second.returncode == 2 and f"in use by process {holder.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stderr.close()
    saved = load_checkpoint(run / "last.pt")["step"]
    code, _, err = cli(capsys, "resume", run, "--quiet", "--steps", saved + 1)
    assert code == 0, err
    assert load_checkpoint(run / "last.pt")["step"] == saved + 1


def test_a_damaged_checkpoint_is_refused_naming_it_and_what_is_intact(config, tmp_path, capsys):
    run = tmp_path / "damaged"
    assert cli(capsys, "train", config, "--out", run, "--quiet", "train.steps=4")[0] == 0
    data = bytearray((run / "last.pt").read_bytes())
    weight = load_checkpoint(run / "last.pt")["model"]["model.features.3.weight"]
    at = bytes(data).find(weight.numpy().tobytes()[-64:])
    data[at + 1] ^= 0x01
    (run / "last.pt").write_bytes(bytes(data))
    code, _, err = cli(capsys, "resume", run, "--quiet", "--steps", 6)
    assert code == 2 and "Traceback" not in err
    assert "last.pt" in err and "checksum" in err and "last.prev.pt (step 3)" in err and "best.pt (step 4)" in err
