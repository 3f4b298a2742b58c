"""A run report: PNG curves from ``metrics.csv`` and a markdown summary.

``make_report(run_dir)`` writes, in ``run_dir``:

* ``loss.png`` — training loss (and validation loss / MSE) against the step;
* ``accuracy.png`` — training and validation accuracy (with the 95% CI band), for classification;
* ``report.md`` — the configuration (``config.yaml`` if present), the training summary, the best
  validation result and the test result (``eval.json`` if present, as written from
  :meth:`EvalResult.to_dict`).

Missing or partial files are tolerated: whatever is there is reported. Plots use matplotlib's
object API with the Agg canvas (no display, no global backend change).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .logging import read_csv

__all__ = ["make_report"]


def _plot(path: Path, title: str, ylabel: str, curves: list[dict[str, Any]]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for curve in curves:
        steps, values = curve["steps"], curve["values"]
        (line,) = ax.plot(steps, values, curve.get("style", "-"), label=curve["label"], linewidth=1.2, markersize=3)
        if curve.get("band") is not None:
            low = [v - b for v, b in zip(values, curve["band"])]
            high = [v + b for v, b in zip(values, curve["band"])]
            ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _series(rows: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float], list[float | None]]:
    picked = [r for r in rows if r.get("split") == split and isinstance(r.get(key), float) and math.isfinite(r[key])
              and r.get("step") is not None]
    return [r["step"] for r in picked], [r[key] for r in picked], [r.get("ci95") for r in picked]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "—" if value is None else str(value)


def make_report(run_dir: str | os.PathLike) -> list[Path]:
    """Write the plots and ``report.md`` for the run in ``run_dir``; returns the files written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"make_report: run directory {str(run_dir)!r} does not exist")
    written: list[Path] = []
    lines = [f"# Run report: {run_dir.name}", ""]

    rows: list[dict[str, Any]] = []
    csv_path = run_dir / "metrics.csv"
    if csv_path.is_file():
        try:
            rows = read_csv(csv_path)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            lines += [f"*metrics.csv could not be read: {error}*", ""]
    else:
        lines += ["*No metrics.csv in this run directory.*", ""]

    # ---------------------------------------------------------------- plots
    train_steps, train_loss, _ = _series(rows, "train", "loss")
    val_steps, val_loss, _ = _series(rows, "val", "loss")
    if train_steps or val_steps:
        curves = []
        if train_steps:
            curves.append({"steps": train_steps, "values": train_loss, "label": "train"})
        if val_steps:
            curves.append({"steps": val_steps, "values": val_loss, "label": "validation", "style": "o-"})
        written.append(_plot(run_dir / "loss.png", "Loss", "loss", curves))
    acc_steps, acc, _ = _series(rows, "train", "accuracy")
    vacc_steps, vacc, vci = _series(rows, "val", "accuracy")
    if acc_steps or vacc_steps:
        curves = []
        if acc_steps:
            curves.append({"steps": acc_steps, "values": acc, "label": "train"})
        if vacc_steps:
            band = [c if isinstance(c, float) and math.isfinite(c) else 0.0 for c in vci]
            curves.append({"steps": vacc_steps, "values": vacc, "label": "validation (95% CI)", "style": "o-", "band": band})
        written.append(_plot(run_dir / "accuracy.png", "Accuracy", "accuracy", curves))

    # ---------------------------------------------------------------- config
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        text = config_path.read_text(encoding="utf-8", errors="replace").rstrip()
        lines += ["## Configuration", "", "```yaml", text, "```", ""]

    # ---------------------------------------------------------------- training
    train_rows = [r for r in rows if r.get("split") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    if train_rows or val_rows:
        lines += ["## Training", ""]
        if train_rows:
            last = train_rows[-1]
            lines.append(f"- steps: {last.get('step')}")
            lines.append(f"- final training loss: {_fmt(last.get('loss'))}"
                         + (f", accuracy: {_fmt(last.get('accuracy'))}" if last.get("accuracy") is not None else ""))
            if last.get("elapsed") is not None:
                lines.append(f"- training time: {last['elapsed']:.1f} s")
            rates = [r["tasks_per_s"] for r in train_rows if isinstance(r.get("tasks_per_s"), float)]
            if rates:
                lines.append(f"- throughput: {sum(rates) / len(rates):.1f} tasks/s (mean of logged windows)")
        if val_rows:
            classification = any(r.get("accuracy") is not None for r in val_rows)
            key = "accuracy" if classification else "loss"
            candidates = [r for r in val_rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
            if candidates:
                best = (max if classification else min)(candidates, key=lambda r: r[key])
                ci = best.get("ci95")
                ci_text = f" ± {_fmt(ci)}" if isinstance(ci, float) and math.isfinite(ci) else ""
                name = "accuracy" if classification else "loss (MSE)"
                lines.append(f"- best validation {name}: {_fmt(best[key])}{ci_text} at step {best.get('step')}")
        lines.append("")

    # ---------------------------------------------------------------- test
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        lines += ["## Test", ""]
        try:
            result = json.loads(eval_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            lines += [f"*eval.json could not be read: {error}*", ""]
        else:
            if isinstance(result, dict) and "mean" in result:
                metric = result.get("metric", "accuracy")
                lines.append(f"- {metric}: {_fmt(result.get('mean'))} ± {_fmt(result.get('ci95'))} "
                             f"(95% CI over {result.get('n', '?')} tasks)")
                others = result.get("metrics")
                if isinstance(others, dict):
                    for key, value in others.items():
                        if key != metric:
                            lines.append(f"- {key}: {_fmt(value)}")
                lines.append("")
            else:
                lines += ["```json", json.dumps(result, indent=2), "```", ""]

    if written:
        lines += ["## Curves", ""] + [f"![{p.stem}]({p.name})" for p in written] + [""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    written.append(report)
    return written
