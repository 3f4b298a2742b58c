"""Smoke test of bench/methods.py (each method's tasks/s beside its nearest relative): it runs and writes its JSON."""

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_methods_bench_runs_and_writes_rows(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import methods

    out = tmp_path / "speed.json"
    assert methods.main(["--quick", "--pairs", "maml-family,metric", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows][:3] == ["MAML", "BOIL", "ProtoMAML"]
    assert all(r["tasks_per_s"] > 0 for r in rows) and rows[0]["relative"] == 1.0
    sys.modules.pop("methods", None)
