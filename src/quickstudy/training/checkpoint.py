"""Checkpoints: written atomically, checked on load, loaded without executing code.

* :func:`save_checkpoint` writes to a temporary file in the destination's directory, flushes and
  fsyncs it, then ``os.replace``-s it over the destination: a reader sees the old file or the new
  one, never half of one, and a failed write leaves the previous checkpoint untouched. With
  ``keep_previous=True`` (the trainer's ``last.pt``) the checkpoint it replaces stays as ``last.prev.pt``.
* Every checkpoint carries ``content_sha256``, a checksum of its content (:mod:`.content_hash`);
  :func:`load_checkpoint` recomputes it, so a flipped bit or an edited value is refused instead of
  trained on. Checkpoints written before checksums existed load as before.
* :func:`load_checkpoint` uses ``torch.load(..., weights_only=True)``: only tensors, dicts, lists,
  tuples, numbers, strings, booleans and ``None`` are accepted, so a checkpoint can't run code.
  Anything unreadable (truncated, corrupt, altered, not a checkpoint) raises ``ValueError`` naming the
  file and the intact checkpoints beside it (``best.pt``, ``last.pt``, ``last.prev.pt``) with their steps.
* :func:`get_rng_state` / :func:`set_rng_state` capture the torch (CPU and CUDA), Python ``random``
  and NumPy global generators in that restricted vocabulary, so that a resumed run draws the same
  numbers as one that never stopped.

A trainer checkpoint (see :class:`~quickstudy.training.Trainer`) is a dict with keys ``format``
(``"quickstudy.checkpoint"``), ``version``, ``step``, ``model``, ``optimizer``, ``scheduler``,
``best``, ``rng``, ``history``, ``trainer`` (its JSON-able settings), ``elapsed``,
``learner_class`` and ``torch_version``. To use the weights alone::

    learner.load_state_dict(load_checkpoint("runs/x/best.pt")["model"])
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write
from .content_hash import content_sha256

__all__ = [
    "trainer_state",
    "load_trainer_state",
    "resume_settings",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CHECKSUM_KEY",
    "previous_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "quickstudy.checkpoint"
CHECKPOINT_VERSION = 1
CHECKSUM_KEY = "content_sha256"
# where a folder's other checkpoints are looked for when one is refused, in the order they are offered
_SIBLINGS = ("best.pt", "last.pt", "last.prev.pt")


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where ``save_checkpoint(path, ..., keep_previous=True)`` keeps the checkpoint it replaced:
    ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], keep_previous: bool = False) -> Path:
    """Write ``state`` with its content checksum to ``path`` atomically (temp file in the same directory +
    ``os.replace``).

    The parent directory is created if needed. On any error the temporary file is removed and the
    previous content of ``path`` (if any) is left as it was. ``keep_previous``: the file replaced stays as
    :func:`previous_checkpoint` (``last.prev.pt``). Returns the path written.
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    if CHECKSUM_KEY in state:
        raise TypeError(f"save_checkpoint: {CHECKSUM_KEY!r} is reserved for the checkpoint's checksum")
    _check_loadable(state, "state")
    payload = dict(state)
    payload[CHECKSUM_KEY] = content_sha256(state)
    with atomic_write(path, previous=previous_checkpoint(path) if keep_previous else None) as handle:
        torch.save(payload, handle)
    return Path(path)


_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def _check_loadable(value: Any, where: str) -> None:
    """Refuse, before writing, anything ``torch.load(weights_only=True)`` would refuse when reading."""
    kind = type(value)
    if kind in _PLAIN or kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__}: not weights-only loadable")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"save_checkpoint: {where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint may hold only tensors, "
        "dicts, lists, tuples, numbers, strings, booleans and None (so it loads with weights_only=True)"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` and check its content
    against its checksum (the checksum is not part of the dict returned).

    Raises ``FileNotFoundError`` when ``path`` is missing and ``ValueError`` naming the file when it
    is truncated, corrupt, altered since it was written, holds objects other than tensors and plain
    containers, or is not a dict; the message then lists the intact checkpoints in the same folder.
    """
    path = Path(path)
    try:
        return _load_checked(path, map_location)
    except ValueError as error:
        intact = _intact_siblings(path)
        if not intact:
            raise
        raise ValueError(f"{error}. Intact checkpoints beside it: {', '.join(intact)}; to go on from one, copy it "
                         f"over {path.name}") from error


def _load_checked(path: Path, map_location) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): the file is truncated or was never written")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = [line for line in lines if "WeightsUnpickler error" in line]
        message = (detail or lines or [type(error).__name__])[0]
        raise ValueError(
            f"checkpoint {str(path)!r} ({size} bytes) could not be loaded: it is truncated, corrupt, or "
            f"not a weights-only PyTorch file ({type(error).__name__}: {message})"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    expected = state.pop(CHECKSUM_KEY, None)  # None: written before checkpoints carried one
    if expected is not None:
        try:
            actual = content_sha256(state)
        except TypeError as error:
            actual = f"unhashable ({error})"
        if actual != expected:
            raise ValueError(f"checkpoint {str(path)!r} fails its checksum: its content was altered or damaged "
                             "after it was written (a flipped bit, an edit), so it is not used")
    version = state.get("version")
    if state.get("format") == CHECKPOINT_FORMAT and isinstance(version, int) and version > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format version {version}, newer than this quickstudy "
            f"understands ({CHECKPOINT_VERSION}): upgrade quickstudy to load it"
        )
    return state


def _intact_siblings(path: Path) -> list[str]:
    """``"name (step N)"`` for the other checkpoints in ``path``'s folder that load and pass their checksum."""
    names = [previous_checkpoint(path).name, *_SIBLINGS]
    intact = []
    for name in dict.fromkeys(names):
        other = path.with_name(name)
        if name == path.name or not other.is_file():
            continue
        try:
            state = _load_checked(other, "cpu")
        except (OSError, ValueError):
            continue
        step = state.get("step")
        intact.append(f"{name} (step {step})" if isinstance(step, int) else name)
    return intact


# --------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """The global torch, CUDA, Python and NumPy generator states, as tensors and plain values."""
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`get_rng_state`."""
    try:
        torch.set_rng_state(state["torch"].cpu())
        py = state["python"]
        internal = tuple(int(v) for v in py["state"].tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
        npst = state["numpy"]
        np.random.set_state(
            (
                npst["name"],
                npst["keys"].numpy().astype(np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"the RNG state is malformed ({type(error).__name__}: {error})") from error
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- trainer state
def trainer_state(trainer) -> dict[str, Any]:
    """Everything needed to continue ``trainer``'s run exactly: weights, the update's state (optimizer and
    schedule), step, best, RNG states, history, the logging window, and the trainer's settings."""
    learner_cls = type(trainer.learner)
    update = trainer.update.state_dict()
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": trainer.step,
        "model": trainer.learner.state_dict(),
        # a GradientUpdate's optimizer and schedule sit at the top level, as in checkpoints before updates existed
        "optimizer": update.get("optimizer"),
        "scheduler": update.get("scheduler"),
        "update": {k: v for k, v in update.items() if k not in ("optimizer", "scheduler")},
        "best": None if trainer.best is None else dict(trainer.best),
        "rng": get_rng_state(),
        "history": [dict(r) for r in trainer.history.rows],
        "window": trainer.window.state(),
        "last_val_step": trainer.last_val_step,
        "elapsed": trainer.elapsed,
        "trainer": trainer.config(),
        "learner_class": f"{learner_cls.__module__}.{learner_cls.__qualname__}",
        "torch_version": str(torch.__version__),
    }
    return state


def load_trainer_state(trainer, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Restore ``trainer`` from :func:`trainer_state`'s dict (``source`` names it in error messages)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source} is not a quickstudy trainer checkpoint (format={state.get('format')!r})")
    missing = [k for k in ("step", "model", "optimizer", "scheduler", "rng", "history") if k not in state]
    if missing:
        raise ValueError(f"{source} lacks {missing}: it is not a complete trainer checkpoint")
    step = int(state["step"])
    if step > trainer.steps:
        raise ValueError(f"{source} is at step {step}, beyond this Trainer's steps={trainer.steps}")
    try:
        trainer.learner.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit {type(trainer.learner).__name__}: {error}") from error
    update = dict(state.get("update") or {})
    update.update(optimizer=state["optimizer"], scheduler=state["scheduler"])
    trainer.update.load_state_dict(update, source=source)
    trainer.step = step
    trainer.best = None if state.get("best") is None else dict(state["best"])
    trainer.history = type(trainer.history)(state["history"], trainer.best)
    trainer.window = type(trainer.window)()
    if state.get("window") is not None:
        trainer.window.load(state["window"])
    trainer.last_val_step = state.get("last_val_step")
    trainer.elapsed = float(state.get("elapsed", 0.0))
    set_rng_state(state["rng"])


def resume_settings(out: str | os.PathLike, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(checkpoint path, trainer settings, checkpoint)`` to rebuild a Trainer from the checkpoint ``out/last.pt`` (or ``out``
    itself, a ``.pt`` file), with ``overrides`` applied; ``device`` is the caller's choice, not the run's."""
    path = Path(out)
    if path.is_dir() or not path.suffix:
        run_dir, path = path, path / "last.pt"
    else:
        run_dir = path.parent
    state = load_checkpoint(path)
    config = state.get("trainer")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds no trainer settings; build the Trainer yourself and call "
                         "restore()")
    config = dict(config)
    if config.get("optimizer") is None and "optimizer" not in overrides:
        raise ValueError(f"checkpoint {str(path)!r} was trained with a custom optimizer: pass optimizer=... to "
                         "Trainer.resume")
    if config.get("schedule") == "<custom>" and "schedule" not in overrides:
        raise ValueError(f"checkpoint {str(path)!r} was trained with a custom schedule: pass schedule=... to "
                         "Trainer.resume")
    if config.get("optimizer_kwargs") is None and "optimizer_kwargs" not in overrides:
        raise ValueError(f"checkpoint {str(path)!r} used optimizer_kwargs that could not be saved: pass "
                         "optimizer_kwargs=...")
    config.pop("device", None)
    config.update(overrides)
    config.setdefault("out", run_dir)
    return path, config, state
