"""Tiny run folders for the reliability tests: a glyph ProtoNet config that trains in about a second, and
helpers to call the CLI in-process and to compare a folder before and after a command."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from quickstudy.cli import main

TINY = {
    "name": "tiny",
    "protocol": "test",
    "data": {"dataset": "glyphs"},
    "task": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
    "model": {"name": "conv4", "hidden": 8, "stride_variant": True},
    "algorithm": {"name": "protonet"},
    "train": {"steps": 4, "val_every": 2, "val_episodes": 4, "checkpoint_every": 2, "log_every": 1},
    "eval": {"episodes": 6, "batch_size": 3},
}


def write_config(folder: Path, filename: str = "tiny.yaml", **sections) -> Path:
    """TINY with ``sections`` replaced (``train={...}`` updates the train section), written as YAML."""
    config = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = Path(folder) / filename
    path.write_text(yaml.safe_dump(config))
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``quickstudy ARGV`` run in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes); an absent folder is empty."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
