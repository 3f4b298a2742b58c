"""Markdown tables from bench/text_cells.py's JSON rows: the published cells, the episode protocols, out of scope.

    .venv/bin/python -m bench.text_tables bench/out/text_cells.json [more.json ...]

Rows with ``cells`` (episodes protocol) go to an episode table (one column per N-way K-shot cell); rows with ``oos``
to the out-of-scope table; the rest to the published-cell table, beside the best published number and the frozen
logistic-regression row of the same cell (the goal: ahead of the first, 3 points above the second).
"""

from __future__ import annotations

import json
import sys

CELLS = [f"{d}-{k}shot" for d in ("banking77", "clinc150", "hwu64") for k in (5, 10)]


def pct(mean: float, ci: float | None = None) -> str:
    return f"{100 * mean:.2f}" if ci is None else f"{100 * mean:.2f} ± {100 * ci:.2f}"


def main(paths: list[str]) -> str:
    rows = [row for path in paths for row in json.loads(open(path).read())]
    out = []
    fixed = [r for r in rows if not r["runs"][0].get("cells") and not r["runs"][0].get("oos")]
    if fixed:
        labels = list(dict.fromkeys(r["label"] for r in fixed))
        out += ["| method | " + " | ".join(CELLS) + " |", "|---|" + "---|" * len(CELLS)]
        for label in labels:
            by = {r["name"]: r for r in fixed if r["label"] == label}
            out.append(f"| {label} | " + " | ".join(pct(by[c]["mean"], by[c]["ci95"]) if c in by else "" for c in CELLS)
                       + " |")
        refs = {r["name"]: r["reference"] for r in fixed}
        best = {c: max(refs[c], key=lambda x: x["value"]) for c in CELLS if refs.get(c)}
        out.append("| best published | " + " | ".join(f"{best[c]['value']:.2f} ({best[c]['source'].split(' (')[0]})"
                                                      if c in best else "" for c in CELLS) + " |")
        out.append("")
        out.append("| method | cell | seeds | CI over | wall minutes per run | CPU minutes per run |")
        out.append("|---|---|---|---|---|---|")
        for r in fixed:
            out.append(f"| {r['label']} | {r['name']} | {len(r['seeds'])} | {r['ci_over']} | "
                       f"{', '.join(map(str, r['minutes_per_run']))} | "
                       f"{', '.join(map(str, r.get('cpu_minutes_per_run', [])))} |")
        out.append("")
    episodes = [r for r in rows if r["runs"][0].get("cells")]
    if episodes:
        keys = list(episodes[0]["runs"][0]["cells"])
        out += ["| run | method | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for r in episodes:
            cells = r["runs"][0]["cells"]
            out.append(f"| {r['name']} | {r['label']} | "
                       + " | ".join(pct(cells[k]["mean"], cells[k]["ci95"]) for k in keys) + " |")
        out.append("")
    oos = [r for r in rows if r["runs"][0].get("oos")]
    if oos:
        out += ["| run | method | in-scope accuracy | out-of-scope recall | out-of-scope precision | threshold |",
                "|---|---|---|---|---|---|"]
        for r in oos:
            for run in r["runs"]:
                o = run["oos"]
                out.append(f"| {r['name']} (seed {run['seed']}) | {r['label']} | {pct(o['in_scope_accuracy'])} | "
                           f"{pct(o['oos_recall'])} | {pct(o['oos_precision'])} | {o['threshold']:.3f} |")
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
