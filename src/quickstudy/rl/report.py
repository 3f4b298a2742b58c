"""An RL run report: return against meta-iteration, return against adaptation steps, and report.md.

``make_rl_report(run_dir)`` writes, in ``run_dir``:

* ``return_vs_iteration.png`` — mean training return before adaptation and after ``inner_steps`` steps, per
  meta-iteration (from ``metrics.csv``);
* ``return_vs_steps.png`` — held-out return after 0..k adaptation steps with 95% CIs (from ``eval.json``), and
  the paper's numbers when the config gives them;
* ``report.md`` — the config, the training summary and the evaluation table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .._atomic import atomic_write_text
from ..safe_yaml import load as load_yaml
from ..training.logging import read_csv

__all__ = ["make_rl_report"]


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def make_rl_report(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    config = load_yaml((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    rows = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    result: dict[str, Any] | None = None
    if (run_dir / "eval.json").is_file():
        result = json.loads((run_dir / "eval.json").read_text())
    name = config.get("name", run_dir.name)
    written: list[Path] = []
    rows = [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("pre_return"), float)]
    if rows:
        fig, ax = _figure()
        iters = [r["step"] for r in rows]
        ax.plot(iters, [r["pre_return"] for r in rows], label="before adaptation", linewidth=1.2)
        ax.plot(iters, [r["post_return"] for r in rows], label="after adaptation", linewidth=1.2)
        written.append(_finish(fig, ax, run_dir / "return_vs_iteration.png", "meta-iteration", "mean return",
                               f"{name}: training tasks"))
    if result is not None:
        fig, ax = _figure()
        steps = sorted(result["return_by_step"], key=int)
        means = [result["return_by_step"][s]["mean"] for s in steps]
        cis = [result["return_by_step"][s]["ci95"] for s in steps]
        ax.errorbar([int(s) for s in steps], means, yerr=cis, fmt="o-", capsize=3, label="quickstudy (95% CI)")
        for ref in result.get("reference") or []:
            values = ref["value"] if isinstance(ref["value"], list) else [ref["value"]]
            ax.plot(range(len(values)), values, "s--", label=ref["source"])
        ax.set_xticks([int(s) for s in steps])
        written.append(_finish(fig, ax, run_dir / "return_vs_steps.png", "adaptation steps", "mean return",
                               f"{name}: {result['tasks']} held-out tasks"))
    lines = [f"# {name}", ""]
    if config.get("protocol"):
        lines += [f"Protocol: {config['protocol']}", ""]
    if rows:
        last = rows[-1]
        env_steps = sum(r.get("env_steps") or 0 for r in rows)  # rows hold each iteration's steps (log_every=1)
        lines += ["## Training", "", f"- meta-iterations: {int(last['step'])}",
                  f"- training time: {last['elapsed'] / 60:.1f} min", f"- environment steps: {int(env_steps)}",
                  f"- last return before / after adaptation: {last['pre_return']:.2f} / {last['post_return']:.2f}", ""]
    if result is not None:
        lines += ["## Evaluation", "", "| adaptation steps | return (mean ± 95% CI) |", "|---|---|"]
        for s, v in result["return_by_step"].items():
            extra = f" (success {100 * v['success']:.1f}%)" if "success" in v else ""
            lines.append(f"| {s} | {v['mean']:.2f} ± {v['ci95']:.2f}{extra} |")
        lines += ["", f"{result['tasks']} held-out tasks, {result['episodes_per_task']} episodes each, "
                      f"seed {result['seed']}."]
        for ref in result.get("reference") or []:
            lines.append(f"Reference ({ref['source']}): {ref['value']}")
        lines.append("")
    lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    written.append(atomic_write_text(run_dir / "report.md", "\n".join(lines)))
    return written
