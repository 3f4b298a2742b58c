"""``quickstudy users recommend RUN --ratings FILE --top N``: the top-N unrated items for one new user, as CSV
(``rank,item,title,predicted_rating``) or one JSON object with ``--json``."""

from __future__ import annotations

import argparse
import csv
import json
import sys

__all__ = ["add_commands"]

COLUMNS = ("rank", "item", "title", "predicted_rating")


def _cmd_recommend(args: argparse.Namespace) -> int:
    from .recommend import recommend_for_ratings

    result = recommend_for_ratings(args.run_dir, args.ratings, top=args.top, user=args.user, checkpoint=args.checkpoint)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    handle = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(result["recommendations"])
    finally:
        if args.out:
            handle.close()
            print(f"wrote {len(result['recommendations'])} recommendations to {args.out}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``quickstudy users ...`` on the main parser."""
    users = sub.add_parser("users", help="recommendation for new users (each user a task)",
                           description="Commands for runs of kind 'users' (configs/users/).")
    commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    recommend = commands.add_parser(
        "recommend", help="the top-N unrated items for one new user",
        description="Adapts the run's meta-learner to every rating in RATINGS (user,item,rating[,timestamp] CSV or "
                    "the '::' format, one user, at least 2 ratings, item ids of the run's catalogue) and prints the "
                    "N unrated items with the highest predicted ratings: rank,item,title,predicted_rating.")
    recommend.add_argument("run_dir", help="a trained run folder (quickstudy train configs/users/...)")
    recommend.add_argument("--ratings", required=True, help="the new user's ratings file")
    recommend.add_argument("--top", type=int, default=10, help="how many items to list (default 10)")
    recommend.add_argument("--user", default=None, help="the user to recommend for, when the file holds several")
    recommend.add_argument("--checkpoint", default="best", choices=["best", "last"])
    recommend.add_argument("--out", default=None, help="write the CSV here instead of stdout")
    recommend.add_argument("--json", action="store_true", help="print one JSON object")
    recommend.set_defaults(func=_cmd_recommend)
