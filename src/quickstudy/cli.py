"""The ``quickstudy`` command: demo | train | resume | eval | adapt | report | search | recommend.

``train``, ``resume``, ``eval`` and ``report`` work on every task kind: the kind of a run is decided once,
from its config (``kind:``), through the registry in :mod:`quickstudy.tasks.kinds`, and the run-folder shell
of :mod:`quickstudy.runs` calls that kind's module. Every command that produces results accepts ``--json`` and
then prints exactly one JSON object on stdout (progress bars and messages go to stderr).

An expected failure (a bad config, a missing file, a folder in use, a damaged checkpoint, diverged training
under ``--strict``: the exceptions in :data:`EXPECTED_ERRORS`) prints one line ``quickstudy CMD: error: ...`` and
exits with 2; anything else is a bug: one line saying where to report it, exit code 1 (``QUICKSTUDY_DEBUG=1``
shows the traceback instead). SIGTERM is handled like Ctrl-C, so the command cleans up behind it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

from . import __version__
from ._validation import int_argument

__all__ = ["main", "build_parser", "EXPECTED_ERRORS"]

#: What a user's input or environment causes (a bad config, a missing or damaged file, a folder in use, no
#: memory left, a missing optional package): reported as one line with exit code 2, never a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, MemoryError)


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")


def _prints() -> bool:
    """Whether this process prints results: under torchrun, rank 0 alone."""
    from .training.distributed import is_main_process

    return is_main_process()


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    results = run_demo(quick=args.quick, progress=not args.json, out=args.out, overwrite=args.overwrite)
    if args.json:
        _print_json(results)
    else:
        print(format_table(results))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .runs import evaluate_run, format_eval, train_run

    limit = args.time_limit * 60 if args.time_limit is not None else None
    run_dir = train_run(args.config, overrides=list(args.overrides), out=args.out, steps=args.steps,
                        progress=not args.quiet, time_limit=limit, overwrite=args.overwrite, strict=args.strict)
    payload = {"run_dir": str(run_dir)}
    if args.eval:
        payload["eval"] = evaluate_run(run_dir, episodes=args.episodes, progress=not args.quiet)
    if not _prints():
        return 0
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
                        time_limit=limit, strict=args.strict)
    if not _prints():
        return 0
    if args.json:
        _print_json({"run_dir": str(run_dir)})
    else:
        print(f"run continued in {run_dir}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .runs import evaluate_run, format_eval

    result = evaluate_run(args.run_dir, episodes=args.episodes, checkpoint=args.checkpoint, progress=not args.json,
                          overrides=getattr(args, "overrides", None))
    if not _prints():
        return 0
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
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["file", "label", "probability"])
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        from ._atomic import atomic_write_text

        atomic_write_text(args.out, text.getvalue())  # whole or not at all
        print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text.getvalue())
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
    demo.add_argument("--overwrite", action="store_true", help="replace the runs an earlier demo left in --out")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="meta-train from a YAML config",
                           description="Validate CONFIG (plus key=value overrides), write the resolved config, "
                                       "train with logs and checkpoints into the run folder. Launched by torchrun "
                                       "(torchrun --nproc_per_node=P -m quickstudy train CONFIG), the P processes "
                                       "share every meta-batch (docs/distributed.md).")
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.steps=100")
    train.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    train.add_argument("--steps", type=int_argument(1), default=None, help="override train.steps")
    train.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                       help="stop after this many minutes of training (validated and checkpointed)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run the folder already holds (without it, such a folder is refused)")
    train.add_argument("--strict", action="store_true",
                       help="stop when training diverges (exploding loss or weights, validation at chance), "
                            "instead of warning")
    train.add_argument("--eval", action="store_true", help="evaluate on the test episodes afterwards")
    train.add_argument("--episodes", type=int_argument(1), default=None, help="test episodes for --eval")
    train.add_argument("--json", action="store_true", help="print one JSON object at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    resume = sub.add_parser("resume", help="continue a run from its last checkpoint",
                            description="Continue RUN_DIR exactly where it stopped (same numbers as an "
                                        "uninterrupted run).")
    resume.add_argument("run_dir")
    resume.add_argument("--steps", type=int_argument(1), default=None, help="new total number of steps")
    resume.add_argument("--strict", action="store_true", help="stop when training diverges, instead of warning")
    resume.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                        help="stop once the run's training time reaches this many minutes")
    resume.add_argument("--json", action="store_true", help="print one JSON object at the end")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    resume.set_defaults(func=_cmd_resume)

    evaluate = sub.add_parser("eval", help="evaluate a run on fixed test episodes",
                              description="Mean accuracy (or MSE) with its 95%% confidence interval over fixed, "
                                          "seeded test episodes, plus macro precision/recall/F1.")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--episodes", type=int_argument(1), default=None,
                          help="test episodes (default: config, 600)")
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
    from .text import cli as text_cli

    text_cli.add_commands(sub)

    from .users import cli as users_cli

    users_cli.add_commands(sub)
    return parser


def _one_line(error: BaseException) -> str:
    """An error's message on one line (multi-line messages, e.g. several config keys, joined)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


@contextmanager
def _cli_session(command: str) -> Iterator[None]:
    """Warnings as ``quickstudy CMD: warning: ...`` lines; SIGTERM raises KeyboardInterrupt, so atomic writes
    remove their temporary files and the run folder's lock is released on the way out."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"quickstudy {command}: warning: {message}", file=sys.stderr)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        if in_main_thread:  # None: a handler installed outside Python, which Python cannot put back
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too ("train cfg.yaml --out r train.steps=5")
    args, extra = parser.parse_known_args(argv)
    if extra:
        # overrides are checked when the config is read (an item without '=' is named there)
        overrides_ok = not any(item.startswith("-") for item in extra)
        if args.command == "train" and overrides_ok:
            args.overrides = list(args.overrides) + extra
        elif args.command == "eval" and overrides_ok:  # e.g. RL's eval.* keys for this evaluation
            args.overrides = extra
        else:
            subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    debug = bool(os.environ.get("QUICKSTUDY_DEBUG"))
    try:
        with _cli_session(args.command):
            if args.command != "report":
                import torch

                from .runs import choose_threads

                torch.set_num_threads(choose_threads())
            return args.func(args)
    except KeyboardInterrupt:
        print(f"quickstudy {args.command}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"quickstudy {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: say so, and where it goes
        if debug:
            raise
        print(f"quickstudy {args.command}: internal error: {type(error).__name__}: {_one_line(error)} (a bug in "
              f"quickstudy {__version__}: please report it on the quickstudy issue tracker with the command you ran "
              "and the traceback that QUICKSTUDY_DEBUG=1 prints)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
