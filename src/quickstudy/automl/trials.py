"""The trials of a study as several workers see them: who ran each, where its run folder is, how it ended.

Run folders are ``OUT/trials/NNNN`` (the trial's number). Trial numbers are unique within one study, but
an output folder can outlive its study or be shared by two (another ``--storage``, a study deleted and
made again), so a folder is claimed with an exclusive ``mkdir``, atomic on local and network file
systems alike: when ``NNNN`` is taken, the trial gets ``NNNN-1``, ``NNNN-2``, ... and nothing already
there is ever overwritten.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["worker_label", "claim_run_dir", "trial_error", "trial_rows"]

# What search.json says about a FAIL trial that recorded no error of its own: only the heartbeat check
# of another worker fails a trial that way, after the trial's worker stopped sending heartbeats.
WORKER_LOST = "its worker stopped during the trial (killed, or lost its machine or connection)"


def worker_label() -> str:
    """``host:pid`` of this worker: which machine holds a trial's run folder, which process ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_run_dir(root: Path, number: int) -> Path:
    """A new, empty run folder for trial ``number`` under ``root``, never one that already exists."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        run_dir = root / (f"{number:04d}" if suffix == 0 else f"{number:04d}-{suffix}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1


def trial_error(trial) -> str | None:
    """Why a FAIL trial failed (``None`` for other states)."""
    if trial.state.name != "FAIL":
        return None
    return trial.user_attrs.get("error") or WORKER_LOST


def trial_rows(study, decode) -> list[dict[str, Any]]:
    """One JSON-ready row per trial of ``study``; ``decode`` turns stored parameters into config values."""
    rows = []
    for t in study.trials:
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": decode(t.params),
            "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "run_dir": t.user_attrs.get("run_dir"), "worker": t.user_attrs.get("worker"),
            "error": trial_error(t), "retry_of": t.system_attrs.get("failed_trial"),
            "train_seconds": t.user_attrs.get("train_seconds"),
            "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        })
    return rows
