"""A users run report: the shared training curves and summary (:func:`quickstudy.training.make_report`), plus
the test table of every method per K and a plot of MAE against K (from ``eval.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from .._atomic import atomic_write_text
from ..training.report import make_report
from .metrics import METRICS

__all__ = ["make_users_report", "markdown_table"]

_NAMES = {"mae": "MAE", "rmse": "RMSE", "ndcg@3": "nDCG@3", "ndcg@5": "nDCG@5"}


def markdown_table(result: dict) -> list[str]:
    """Markdown lines: per K, each method's metrics (mean ± 95% CI) and the paired comparison with the best
    baseline."""
    lines = []
    for shots, block in result["by_shots"].items():
        lines += [f"### K = {shots} support ratings ({block['users']} test users)", "",
                  "| method | " + " | ".join(_NAMES[m] for m in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for name, summary in block["methods"].items():
            cells = [f"{summary[m]['mean']:.3f} ± {summary[m]['ci95']:.3f}" for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        best = block.get("best_baseline")
        if best is not None:
            diff = block["paired"][best]
            lines += ["", f"{result['method']} − {best} (the best baseline here), per-user paired differences: "
                      + ", ".join(f"{_NAMES[m]} {diff[m]['mean']:+.3f} ± {diff[m]['ci95']:.3f}" for m in METRICS)
                      + f" (MAE {100 * diff['mae']['relative']:+.1f}%)."]
        lines.append("")
    return lines


def _mae_plot(path: Path, result: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shots = [int(k) for k in result["by_shots"]]
    methods = list(next(iter(result["by_shots"].values()))["methods"])
    for name in methods:
        means = [result["by_shots"][str(k)]["methods"][name]["mae"]["mean"] for k in shots]
        cis = [result["by_shots"][str(k)]["methods"][name]["mae"]["ci95"] for k in shots]
        ax.errorbar(shots, means, yerr=cis, marker="o", capsize=3, label=name,
                    linewidth=2.0 if name == result["method"] else 1.0)
    ax.set_xlabel("support ratings K")
    ax.set_ylabel("MAE (95% CI)")
    ax.set_title(f"{result['experiment']}: test MAE")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def make_users_report(run_dir: str | Path) -> list[Path]:
    """``make_report``'s files, with the test tables in ``report.md`` and ``mae.png`` when ``eval.json`` exists."""
    run_dir = Path(run_dir)
    written = make_report(run_dir)
    eval_path = run_dir / "eval.json"
    if not eval_path.is_file():
        return written
    try:
        result = json.loads(eval_path.read_text(encoding="utf-8"))
        lines = markdown_table(result)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{eval_path} is not a users evaluation ({error}); run quickstudy eval {run_dir}") from None
    report = run_dir / "report.md"
    text = report.read_text(encoding="utf-8")
    before_curves, marker, curves = text.partition("## Curves")
    head = before_curves.partition("## Test")[0]  # the generic test section cannot read this eval.json's layout
    plot = _mae_plot(run_dir / "mae.png", result)
    body = head.rstrip() + "\n\n## Test\n\n" + "\n".join(lines) + f"\n![mae]({plot.name})\n"
    atomic_write_text(report, body + (f"\n{marker}{curves}" if marker else ""))
    return [p for p in written if p != report] + [plot, report]
