"""Where a meta-step's time goes, per cell and library, from the profiles a ``bench.speed --profile`` run kept.

    python -m bench.speed_profile docs/bench/speed_cpu_full.json              # table
    python -m bench.speed_profile docs/bench/speed_cpu_full.json --json out.json

Each profiled worker ran one extra meta-step under torch.profiler with every thread recorded
(``bench/peers/common.py``, ``profile_step``). Columns, per meta-step:

- ``wall ms``: the step's wall time under the profiler;
- ``conv ms``: self time of oneDNN's convolutions (``aten::mkldnn_convolution`` forward, ``aten::convolution_backward``
  for backward and double backward), summed over the threads that called them;
- ``other ms``: self time of every other op, summed the same way;
- ``conv %``: the convolutions' share of all op time;
- ``in ops``: (conv + other) / wall, the number of threads inside ops on average. quickstudy's threads strategy runs
  one task per worker thread with one intra-op thread each, so its ops are counted on each worker. The peers run
  one task at a time on the calling thread, whose ops use torch's intra-op (OpenMP) threads: those are not
  recorded, so their ``in ops`` stays near 1 while both cores work inside a convolution;
- ``conv lead``: the fastest profiled peer's ``conv ms`` / (this row's ``conv ms`` / ``in ops``), the lead this row
  has on convolutions alone (its convolutions spread over its threads, the peer's on its intra-op threads).

Only the ops of each profile's top 30 by self time are kept in the JSON; the rest is in ``other``'s gap to the
recorded total.
"""

from __future__ import annotations

import argparse
import json
import sys

CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")
PEERS = ("learn2learn", "higher", "torchopt", "parallel_metalearn")


def breakdown(result: dict) -> dict | None:
    """The per-step split of one worker's profile, or None if it has none."""
    profile = result.get("profile")
    if not profile:
        return None
    conv_s = sum(op["self_cpu_ms"] for op in profile["top"] if op["op"] in CONVOLUTION_OPS) / 1e3
    ops_s = profile["ops_self_cpu_s"]
    wall_s = profile["profile_wall_s"]
    return {"wall_ms": 1e3 * wall_s, "conv_ms": 1e3 * conv_s, "other_ms": 1e3 * (ops_s - conv_s),
            "conv_share": conv_s / ops_s if ops_s else 0.0, "in_ops": ops_s / wall_s if wall_s else 0.0,
            "tasks_per_s": result.get("tasks_per_s"), "ratio_to_fastest_peer": result.get("ratio_to_fastest_peer")}


def table(results: dict) -> dict[str, dict[str, dict]]:
    rows: dict[str, dict[str, dict]] = {}
    for cell, by_lib in results.items():
        split = {lib: b for lib, r in by_lib.items() if (b := breakdown(r)) is not None}
        peer_conv = [split[lib]["conv_ms"] for lib in PEERS if lib in split]
        best_peer_conv = min(peer_conv) if peer_conv else None
        for b in split.values():
            spread = b["conv_ms"] / b["in_ops"] if b["in_ops"] else None
            b["conv_lead"] = best_peer_conv / spread if best_peer_conv and spread else None
        if split:
            rows[cell] = split
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("speed_json", help="a bench.speed --profile JSON")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    try:
        with open(args.speed_json) as handle:
            results = json.load(handle)["results"]
    except (OSError, ValueError, KeyError) as error:
        print(f"bench.speed_profile: cannot read {args.speed_json}: {error}", file=sys.stderr)
        return 2
    rows = table(results)
    if not rows:
        print(f"bench.speed_profile: {args.speed_json} holds no profiles (run bench.speed with --profile)",
              file=sys.stderr)
        return 2
    print(f"{'cell':<32}{'library':<20}{'tasks/s':>8}{'vs peer':>8}{'wall ms':>9}{'conv ms':>9}{'other ms':>9}"
          f"{'conv %':>7}{'in ops':>7}{'conv lead':>10}")
    for cell, split in rows.items():
        for lib, b in split.items():
            ratio = f"{b['ratio_to_fastest_peer']:.2f}" if b["ratio_to_fastest_peer"] else "-"
            lead = f"{b['conv_lead']:.2f}" if b["conv_lead"] else "-"
            speed = f"{b['tasks_per_s']:.2f}" if b["tasks_per_s"] else "-"
            print(f"{cell:<32}{lib:<20}{speed:>8}{ratio:>8}{b['wall_ms']:>9.0f}{b['conv_ms']:>9.0f}"
                  f"{b['other_ms']:>9.0f}{100 * b['conv_share']:>6.0f}%{b['in_ops']:>7.2f}{lead:>10}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
