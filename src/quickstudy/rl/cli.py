"""The RL side of the ``quickstudy`` command: ``train``/``resume``/``eval``/``report`` dispatch here when the
config (or the run folder's ``config.yaml``) says ``kind: rl``. Same flags and ``--json`` contract as the
supervised commands: exactly one JSON object on stdout, progress and messages on stderr."""

from __future__ import annotations

import argparse
import json
import sys

from .config import is_rl_config

__all__ = ["is_rl_config", "train", "resume", "evaluate", "report", "format_eval"]


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")


def format_eval(result: dict) -> str:
    steps = " / ".join(f"{v['mean']:.2f} ± {v['ci95']:.2f}" for v in result["return_by_step"].values())
    line = (f"{result['experiment']}: return after {', '.join(result['return_by_step'])} adaptation steps: {steps} "
            f"(mean ± 95% CI over {result['tasks']} held-out tasks, {result['episodes_per_task']} episodes each)")
    if "success" in result:
        rates = " / ".join(f"{100 * v['success']:.1f}%" for v in result["return_by_step"].values())
        line += f"\nsuccess rate by adaptation step: {rates}"
    for ref in result.get("reference") or []:
        line += f"\nreference ({ref['source']}): {ref['value']}"
    return line


def train(args: argparse.Namespace) -> int:
    from .experiment import evaluate_rl_run, train_rl

    overrides = list(args.overrides)
    limit = args.time_limit * 60 if args.time_limit is not None else None
    run_dir = train_rl(args.config, overrides=overrides, out=args.out, iterations=args.steps,
                       progress=not args.quiet, time_limit=limit)
    payload: dict = {"run_dir": str(run_dir)}
    if args.eval:
        payload["eval"] = evaluate_rl_run(run_dir, tasks=args.episodes, progress=not args.quiet)
    if args.json:
        _print_json(payload)
    else:
        print(f"run written to {run_dir}", file=sys.stderr)
        if "eval" in payload:
            print(format_eval(payload["eval"]))
    return 0


def resume(args: argparse.Namespace) -> int:
    from .experiment import train_rl

    limit = args.time_limit * 60 if args.time_limit is not None else None
    run_dir = train_rl(None, out=args.run_dir, resume=True, iterations=args.steps, progress=not args.quiet,
                       time_limit=limit)
    if args.json:
        _print_json({"run_dir": str(run_dir)})
    else:
        print(f"run continued in {run_dir}", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``--episodes`` sets the number of held-out tasks (default ``eval.tasks``)."""
    from .experiment import evaluate_rl_run

    result = evaluate_rl_run(args.run_dir, tasks=args.episodes, progress=not args.json,
                             overrides=list(getattr(args, "overrides", None) or []))
    if args.json:
        _print_json(result)
    else:
        print(format_eval(result))
    return 0


def report(args: argparse.Namespace) -> int:
    from .report import make_rl_report

    written = [str(p) for p in make_rl_report(args.run_dir)]
    if args.json:
        _print_json({"files": written})
    else:
        for path in written:
            print(path)
    return 0
