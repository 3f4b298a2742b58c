"""The registry of task kinds: what a config's ``kind:`` names, and the module that runs it.

A task kind is a family of tasks with its own config section, task sources and evaluation: few-shot
``episodes`` (images, sinusoids; the default when a config has no ``kind``), meta-reinforcement learning
(``rl``), ... The CLI decides the kind of a run once (:func:`kind_of`) and calls the kind's module, which
implements::

    NAME: str
    STEPS_KEY: str                                   # the dotted config key that --steps overrides
    DISTRIBUTED: bool                                # optional: True if its processes share the work under torchrun
    load_config(path=None, overrides=None, raw=None) -> (config, resolved dict)
    train(config, run_dir, *, resume, progress, time_limit, callbacks) -> None   # the shared Trainer, callbacks=
    RESULT_FILES: tuple[str, ...]                    # optional: result files removed when a run is overwritten
    evaluate(run_dir, *, episodes, checkpoint, progress, overrides) -> dict   # writes run_dir/eval.json
    format_eval(result) -> str
    report(run_dir) -> list[Path]

Everything else (run folders, the Trainer, checkpoints, callbacks, reports, the CLI) is shared. Modules are
imported on first use, so a kind whose extra is not installed costs nothing until it is named. This module
imports nothing of quickstudy's but the YAML reader (a leaf): registering a kind never makes an import cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["TaskKind", "KINDS", "DEFAULT_KIND", "register_kind", "get_kind", "kind_of"]

DEFAULT_KIND = "episodes"


@dataclass(frozen=True)
class TaskKind:
    """A registered kind: its ``name`` (a config's ``kind:``), the ``module`` that implements it (see the module
    docstring), a one-line ``description`` and the ``extra`` to install for it (if any)."""

    name: str
    module: str
    description: str
    extra: str | None = None

    def load(self) -> ModuleType:
        try:
            return importlib.import_module(self.module)
        except ImportError as error:
            if self.extra is None:
                raise
            raise ImportError(f"task kind {self.name!r} needs the '{self.extra}' extra: "
                              f"pip install 'quickstudy[{self.extra}]' ({error})") from error


KINDS: dict[str, TaskKind] = {}


def register_kind(name: str, module: str, description: str, extra: str | None = None) -> TaskKind:
    """Make ``kind: <name>`` in a config run through ``module`` (a dotted module path)."""
    KINDS[name] = TaskKind(name, module, description, extra)
    return KINDS[name]


register_kind("episodes", "quickstudy.experiment", "few-shot classification and regression episodes (images, "
              "sinusoids)")
register_kind("rl", "quickstudy.rl.kind", "meta-reinforcement learning on task families of environments")
register_kind("text", "quickstudy.text.kind", "few-shot intent detection on text (sentence encoder)", extra="text")
register_kind("users", "quickstudy.users.kind", "recommendation for new users: each user's ratings a regression task")


def get_kind(name: Any, source: str = "config") -> TaskKind:
    """The kind registered as ``name``; a clear error naming the known kinds otherwise."""
    if not isinstance(name, str) or name not in KINDS:
        raise ValueError(f"{source}: key 'kind': {name!r} is not a task kind; expected one of "
                         f"{', '.join(sorted(KINDS))}")
    return KINDS[name]


def kind_of(config: str | Path | dict | None) -> TaskKind:
    """The kind of a config: a raw dict, a YAML file, or a run folder holding ``config.yaml``. A config without
    ``kind`` (or a path that is not a readable YAML mapping: the kind's own loader reports that) is
    ``episodes``."""
    source = "config"
    if isinstance(config, (str, Path)):
        from ..safe_yaml import load as load_yaml

        path = Path(config)
        if path.is_dir():
            path = path / "config.yaml"
        source = str(path)
        try:  # the same bounded reader as the kinds' loaders: an alias bomb is refused there, not expanded here
            config = load_yaml(path.read_text(encoding="utf-8"), source) if path.is_file() else None
        except (ValueError, OSError):  # invalid YAML, a refused one, unreadable: the kind's loader says why
            config = None
    name = config.get("kind", DEFAULT_KIND) if isinstance(config, dict) else DEFAULT_KIND
    return get_kind(name, source)
