"""``quickstudy demo``: meta-train and evaluate on the embedded defaults, no download, a few minutes on
2 CPU cores.

1. MAML on sinusoid regression (Finn et al. 2017, K=10): MSE on new sinusoids before adaptation and
   after 1 and 10 gradient steps, against a "pretrained" baseline trained on all tasks jointly
   (MAML with 0 inner steps) adapted the same way.
2. Prototypical Networks and first-order MAML on the embedded glyphs (characters rendered from
   matplotlib's fonts, split by Unicode block like Omniglot's alphabets): 5-way 1-shot test accuracy
   with its 95% confidence interval over fixed test episodes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from .runs import check_no_run, evaluate_run, train_run

__all__ = ["DEMO_CONFIGS", "run_demo", "format_table"]

_SINE = {
    "data": {"dataset": "sinusoid"},
    "task": {"shots": 10, "queries": 10, "meta_batch": 25},
    "model": {"name": "mlp", "in_features": 1, "out_features": 1, "hidden": [40, 40]},
    "train": {"steps": 3000, "lr": 0.001, "val_every": 1000, "val_episodes": 100, "checkpoint_every": 1000},
    "eval": {"episodes": 600, "batch_size": 100, "max_steps": 10, "inner_steps": 10},
}

DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "sinusoid-maml": {
        **_SINE, "name": "demo-sinusoid-maml",
        "protocol": "Finn et al. 2017 sinusoid, K=10, 1 inner step of 0.01 at training",
        "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    },
    "sinusoid-pretrained": {
        **_SINE, "name": "demo-sinusoid-pretrained",
        "protocol": "joint training on all tasks (0 inner steps), fine-tuned with steps of 0.01 at test",
        "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 0},
    },
    "glyphs-protonet": {
        "name": "demo-glyphs-protonet",
        "protocol": "embedded glyphs, 5-way 1-shot, 15 queries, split by Unicode block",
        "data": {"dataset": "glyphs"},
        "task": {"ways": 5, "shots": 1, "queries": 5, "meta_batch": 8, "test_queries": 15},
        "model": {"name": "conv4", "stride_variant": True},
        "algorithm": {"name": "protonet"},
        "train": {"steps": 400, "lr": 0.001, "val_every": 200, "val_episodes": 100, "checkpoint_every": 200},
        "eval": {"episodes": 600, "batch_size": 50},
    },
    "glyphs-fomaml": {
        "name": "demo-glyphs-fomaml",
        "protocol": "embedded glyphs, 5-way 1-shot, 15 queries, transductive batch norm",
        "data": {"dataset": "glyphs"},
        "task": {"ways": 5, "shots": 1, "queries": 5, "meta_batch": 8, "test_queries": 15},
        "model": {"name": "conv4", "stride_variant": True},
        "algorithm": {"name": "fomaml", "inner_lr": 0.4, "inner_steps": 1, "eval_steps": 3},
        "train": {"steps": 400, "lr": 0.001, "val_every": 200, "val_episodes": 100, "checkpoint_every": 200},
        "eval": {"episodes": 600, "batch_size": 50},
    },
}

_QUICK = ["train.steps=5", "train.val_every=5", "train.val_episodes=8", "eval.episodes=20", "eval.batch_size=10"]


def run_demo(quick: bool = False, progress: bool = True, out: str | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate every demo config; returns ``{name: eval result}`` plus timings. ``out``: keep the runs
    there (runs an earlier demo left are refused, before anything trains, unless ``overwrite``)."""
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"{str(out)!r} is not a folder: the demo's runs need a folder")
    if out is not None and not overwrite:
        for key in DEMO_CONFIGS:
            check_no_run(Path(out) / key)
    with tempfile.TemporaryDirectory(prefix="quickstudy-demo-") as scratch:
        root = Path(out) if out else Path(scratch)
        for key, config in DEMO_CONFIGS.items():
            run_dir = train_run(None, raw=config, overrides=_QUICK if quick else [], out=root / key,
                                progress=progress, overwrite=overwrite)
            result = evaluate_run(run_dir, progress=progress, checkpoint="best")
            result.pop("machine", None)
            results[key] = result
    return {"results": results, "seconds": time.perf_counter() - started, "quick": quick}


def format_table(payload: dict[str, Any]) -> str:
    results = payload["results"]
    lines = ["", "quickstudy demo", ""]
    sine = {k: v for k, v in results.items() if v["metric"] == "mse"}
    if sine:
        episodes = next(iter(sine.values()))["episodes"]
        lines += [f"Sinusoid regression, K=10: MSE on {episodes} new tasks (± 95% CI)",
                  f"  {'model':<24}{'0 steps':>16}{'1 step':>16}{'10 steps':>16}"]
        for key, result in sine.items():
            cells = []
            for step in ("0", "1", "10"):
                entry = result["mse_by_step"].get(step)
                cells.append(f"{entry['mean']:.3f} ± {entry['ci95']:.3f}" if entry else "-")
            lines.append(f"  {key:<24}" + "".join(f"{c:>16}" for c in cells))
        lines.append("")
    glyphs = {k: v for k, v in results.items() if v["metric"] == "accuracy"}
    if glyphs:
        episodes = next(iter(glyphs.values()))["episodes"]
        lines += [f"Embedded glyphs, 5-way 1-shot: test accuracy on {episodes} episodes (± 95% CI)"]
        for key, result in glyphs.items():
            lines.append(f"  {key:<24}{100 * result['mean']:>8.1f}% ± {100 * result['ci95']:.1f}%"
                         f"   (train {result['train_seconds']:.0f} s)")
        lines.append("  chance: 20.0%")
        lines.append("")
    lines.append(f"total {payload['seconds']:.0f} s" + ("  (--quick: a smoke test, not a result)" if payload["quick"] else ""))
    return "\n".join(lines)
