"""``quickstudy intents train|predict``: few-shot intent detection on your own labelled messages.

    quickstudy intents train DATA.csv --text-column text --label-column intent --out RUN
    quickstudy intents predict RUN "my card has not arrived"            # label, probability, out-of-scope flag
    quickstudy intents predict RUN --file messages.txt --json

Heavy imports (torch, the encoder) stay inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_commands"]


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")


def _cmd_train(args: argparse.Namespace) -> int:
    from .._atomic import atomic_write_text
    from .extra import require_text_extra
    from .kind import load_config, target_data, train

    import yaml

    raw = {"kind": "text", "name": Path(args.out).name, "seed": args.seed,
           "data": {"dataset": "file", "path": str(args.data), "text_column": args.text_column,
                    "label_column": args.label_column, "shots": None},
           "encoder": {"name": args.encoder},
           "finetune": {"epochs": args.finetune_epochs},
           "classifier": {"name": args.classifier}}
    if args.oos_threshold is not None:
        raw["oos"] = {"enabled": True, "threshold": args.oos_threshold}
    config, resolved = load_config(raw=raw)
    target_data(config, "train")  # bad input fails here, naming the file, row and column
    require_text_extra("quickstudy intents train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    train(config, out, progress=not (args.quiet or args.json))
    summary = json.loads((out / "train.json").read_text())
    if args.json:
        _print_json({"run_dir": str(out), **summary})
    else:
        print(f"trained on {summary['train_texts']} messages of {summary['intents']} intents in "
              f"{summary['minutes']['total']:.2f} min; model in {out}", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..data.intents import read_lines
    from .extra import require_text_extra
    from .model import IntentModel

    if bool(args.texts) == bool(args.file):
        raise ValueError("give the messages to label as arguments or with --file FILE (one a line), not both")
    texts = list(args.texts) if args.texts else read_lines(args.file)
    run = Path(args.run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    from .model import MODEL_FILE

    if not (run / MODEL_FILE).is_file():  # before loading the encoder: a clear error without the extra too
        raise ValueError(f"{run}: not a text intent run (no {MODEL_FILE}); train one with "
                         "'quickstudy intents train DATA.csv --out RUN'")
    require_text_extra("quickstudy intents predict")
    model = IntentModel.load(run)
    rows = model.predict(texts, progress=not args.json and len(texts) > 200)
    if args.json:
        _print_json({"run_dir": str(run), "threshold": model.threshold, "predictions": rows})
        return 0
    print("label\tprobability\tout_of_scope\ttext")
    for row in rows:
        print(f"{row['label']}\t{row['probability']:.4f}\t{str(row['out_of_scope']).lower()}\t{row['text']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``quickstudy intents`` on the main parser."""
    intents = sub.add_parser("intents", help="few-shot intent detection on your own messages (text extra)",
                             description="Train an intent model on a few labelled messages per intent, then label "
                                         "new messages (label, probability, out-of-scope flag). Needs "
                                         "pip install 'quickstudy[text]'; works offline.")
    commands = intents.add_subparsers(dest="intents_command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an intent model from a CSV or JSONL file",
                                description="DATA is a CSV (header row) or JSONL file with a text column and a "
                                            "label column; every intent needs at least two messages.")
    train.add_argument("data", help="CSV or JSONL file of labelled messages")
    train.add_argument("--text-column", default="text", help="column holding the message (default: text)")
    train.add_argument("--label-column", default="label", help="column holding the intent (default: label)")
    train.add_argument("--out", required=True, help="run folder to write the model into")
    train.add_argument("--encoder", default="minilm",
                       help="'minilm' (bundled all-MiniLM-L6-v2) or a local sentence-transformers folder")
    train.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                       help="contrastive fine-tuning epochs of the encoder on your messages (default 0: frozen "
                            "encoder, seconds; 8 gains accuracy at minutes per thousand messages on a CPU)")
    train.add_argument("--classifier", default="logistic", choices=["logistic", "prototypes", "head"],
                       help="classifier on the embeddings (head needs --finetune-epochs > 0)")
    train.add_argument("--oos-threshold", type=float, default=None, metavar="P",
                       help="flag a message out of scope when its top probability is below P")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    predict = commands.add_parser("predict", help="label messages with a trained intent model",
                                  description="Prints label, probability, out-of-scope flag and text, one message a "
                                              "line (tab-separated), or one JSON object with --json.")
    predict.add_argument("run_dir", help="run folder written by 'intents train' (or a kind: text config)")
    predict.add_argument("texts", nargs="*", help="messages to label")
    predict.add_argument("--file", default=None, help="UTF-8 text file, one message a line")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(func=_cmd_predict)
