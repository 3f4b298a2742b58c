"""Logging backends of the trainer: a CSV file (always) and TensorBoard (when installed).

Both receive *rows*: dicts with ``step`` (completed meta-updates), ``split`` (``"train"`` or
``"val"``) and numbers. The CSV has fixed columns :data:`CSV_COLUMNS` (empty cells where a row has
no value, e.g. ``accuracy`` for regression); TensorBoard gets every numeric entry as
``{split}/{name}``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .._atomic import atomic_write

__all__ = ["CSV_COLUMNS", "CSVLogger", "TensorBoardLogger", "read_csv"]

_log = logging.getLogger("quickstudy")

#: Columns of ``metrics.csv``, in order.
CSV_COLUMNS = ("step", "split", "loss", "accuracy", "ci95", "lr", "tasks_per_s", "grad_norm", "elapsed")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    return str(value)


class CSVLogger:
    """Append rows to ``path`` (header written when the file is new); flushed after every row so a
    crash loses nothing that was logged."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] = CSV_COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)
        self._handle = None

    def _open(self):
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", newline="", encoding="utf-8")
            if new:
                csv.writer(self._handle).writerow(self.columns)
        return self._handle

    def log(self, row: dict[str, Any]) -> None:
        handle = self._open()
        csv.writer(handle).writerow([_cell(row.get(column)) for column in self.columns])
        handle.flush()

    def rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the file with exactly ``rows`` (atomically); used on resume to drop rows that were
        logged after the checkpoint and would otherwise appear twice."""
        self.close()
        with atomic_write(self.path) as raw:
            handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for row in rows:
                writer.writerow([_cell(row.get(column)) for column in self.columns])
            handle.flush()
            handle.detach()  # leave the binary handle open for atomic_write to fsync and rename

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TensorBoardLogger:
    """Scalars to TensorBoard via ``torch.utils.tensorboard.SummaryWriter``.

    Use :meth:`create`, which returns ``None`` (after a one-line warning) when the ``tensorboard``
    package is not installed. ``purge_step`` discards events at or after that step left by an
    earlier, interrupted run of the same directory (used on resume).
    """

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def create(cls, log_dir: str | os.PathLike, purge_step: int | None = None) -> "TensorBoardLogger | None":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is an optional dependency
            _log.warning("TensorBoard logging skipped: %s (pip install tensorboard)", error)
            return None
        return cls(SummaryWriter(log_dir=str(log_dir), purge_step=purge_step))

    def log(self, row: dict[str, Any]) -> None:
        split, step = row.get("split", "train"), int(row["step"])
        for key, value in row.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` with numbers parsed (``step`` as int, empty cells as ``None``)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, text in raw.items():
                if key is None:
                    continue
                if text is None or text == "":
                    row[key] = None
                elif key == "split":
                    row[key] = text
                elif key == "step":
                    try:
                        row[key] = int(text)
                    except ValueError:
                        row[key] = None
                else:
                    try:
                        row[key] = float(text)
                    except ValueError:
                        row[key] = text
            rows.append(row)
    return rows
