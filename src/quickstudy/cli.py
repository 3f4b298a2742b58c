"""The ``quickstudy`` command: demo | train | resume | eval | adapt | report | search | recommend.

``train``, ``resume``, ``eval`` and ``report`` work on every task kind: the kind of a run is decided once,
from its config (``kind:``), through the registry in :mod:`quickstudy.tasks.kinds`, and the run-folder shell
of :mod:`quickstudy.runs` calls that kind's module. Every command that produces results accepts ``--json`` and
then prints exactly one JSON object on stdout (progress bars and messages go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__

__all__ = ["main"]


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    results = run_demo(quick=args.quick, progress=not args.json, out=args.out)
    if args.json:
        _print_json(results)
    else:
        print(format_table(results))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .runs import evaluate_run, format_eval, train_run

    limit = args.time_limit * 60 if args.time_limit is not None else None
    run_dir = train_run(args.config, overrides=list(args.overrides), out=args.out, steps=args.steps,
                        progress=not args.quiet, time_limit=limit)
    payload = {"run_dir": str(run_dir)}
    if args.eval:
        payload["eval"] = evaluate_run(run_dir, episodes=args.episodes, progress=not args.quiet)
    if args.json:
        _print_json(payload)
    else:
        print(f"run written to {run_dir}", file=sys.stderr)
        if "eval" in payload:
            print(format_eval(payload["eval"], run_dir))
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from .runs import train_run

    limit = args.time_limit * 60 if args.time_limit is not None else None
    run_dir = train_run(None, out=args.run_dir, resume=True, steps=args.steps, progress=not args.quiet,
                        time_limit=limit)
    if args.json:
        _print_json({"run_dir": str(run_dir)})
    else:
        print(f"run continued in {run_dir}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .runs import evaluate_run, format_eval

    result = evaluate_run(args.run_dir, episodes=args.episodes, checkpoint=args.checkpoint, progress=not args.json,
                          overrides=getattr(args, "overrides", None))
    if args.json:
        _print_json(result)
    else:
        print(format_eval(result, args.run_dir))
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from .experiment import adapt_folders

    rows = adapt_folders(args.run_dir, support=args.support, query=args.query, checkpoint=args.checkpoint)
    if args.json:
        _print_json({"predictions": rows})
        return 0
    import csv

    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.DictWriter(handle, fieldnames=["file", "label", "probability"])
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        handle.close()
        print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .runs import report_run

    written = [str(p) for p in report_run(args.run_dir)]
    if args.json:
        _print_json({"files": written})
    else:
        for path in written:
            print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quickstudy",
        description="Meta-learning for PyTorch: meta-train, evaluate and adapt few-shot learners.")
    parser.add_argument("--version", action="version", version=f"quickstudy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="meta-train and evaluate on the embedded defaults (sinusoid, glyphs)",
                          description="Meta-trains MAML on sinusoid regression and on the embedded glyphs "
                                      "(5-way 1-shot), evaluates both and prints a table. No download.")
    demo.add_argument("--json", action="store_true", help="print one JSON object with the results")
    demo.add_argument("--quick", action="store_true", help="a few steps only (a smoke test, seconds)")
    demo.add_argument("--out", default=None, help="also keep the demo's run folders here")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="meta-train from a YAML config",
                           description="Validate CONFIG (plus key=value overrides), write the resolved config, "
                                       "train with logs and checkpoints into the run folder.")
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.steps=100")
    train.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    train.add_argument("--steps", type=int, default=None, help="override train.steps")
    train.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                       help="stop after this many minutes of training (validated and checkpointed)")
    train.add_argument("--eval", action="store_true", help="evaluate on the test episodes afterwards")
    train.add_argument("--episodes", type=int, default=None, help="test episodes for --eval")
    train.add_argument("--json", action="store_true", help="print one JSON object at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    resume = sub.add_parser("resume", help="continue a run from its last checkpoint",
                            description="Continue RUN_DIR exactly where it stopped (same numbers as an "
                                        "uninterrupted run).")
    resume.add_argument("run_dir")
    resume.add_argument("--steps", type=int, default=None, help="new total number of steps")
    resume.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                        help="stop once the run's training time reaches this many minutes")
    resume.add_argument("--json", action="store_true", help="print one JSON object at the end")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    resume.set_defaults(func=_cmd_resume)

    evaluate = sub.add_parser("eval", help="evaluate a run on fixed test episodes",
                              description="Mean accuracy (or MSE) with its 95%% confidence interval over fixed, "
                                          "seeded test episodes, plus macro precision/recall/F1.")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--episodes", type=int, default=None, help="test episodes (default: config, 600)")
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "last"])
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_cmd_eval)

    adapt = sub.add_parser("adapt", help="adapt a trained run to your own few-shot task and predict",
                           description="SUPPORT holds one sub-folder of images per class; QUERY holds images. "
                                       "Prints file, label, probability as CSV (or JSON).")
    adapt.add_argument("run_dir")
    adapt.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    adapt.add_argument("--query", required=True, help="folder of images to label")
    adapt.add_argument("--checkpoint", default="best", choices=["best", "last"])
    adapt.add_argument("--out", default=None, help="write the CSV here instead of stdout")
    adapt.add_argument("--json", action="store_true", help="print one JSON object")
    adapt.set_defaults(func=_cmd_adapt)

    report = sub.add_parser("report", help="plots and a markdown summary of a run",
                            description="Writes PNG training/validation curves and report.md into RUN_DIR.")
    report.add_argument("run_dir")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.set_defaults(func=_cmd_report)

    from .automl import cli as automl_cli

    automl_cli.add_commands(sub)
    from .users import cli as users_cli

    users_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too ("train cfg.yaml --out r train.steps=5")
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides_ok = all("=" in item and not item.startswith("-") for item in extra)
        if args.command == "train" and overrides_ok:
            args.overrides = list(args.overrides) + extra
        elif args.command == "eval" and overrides_ok:  # e.g. RL's eval.* keys for this evaluation
            args.overrides = extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command != "report":
        import torch

        from .runs import choose_threads

        torch.set_num_threads(choose_threads())
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("QUICKSTUDY_DEBUG"):
            raise
        print(f"quickstudy {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
