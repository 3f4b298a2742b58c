"""bench/text_cells.py's seed interval and bench/text_tables.py's tables (no encoder, no data)."""

import json
import math

import pytest


def test_seed_interval_is_student_t():
    from bench.text_cells import seed_ci

    # values 0.80, 0.82, 0.84: sd = 0.02, t(0.975, 2) = 4.303 -> 4.303 * 0.02 / sqrt(3)
    assert seed_ci([0.80, 0.82, 0.84]) == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert seed_ci([0.8]) == 0.0


def test_tables_split_rows_by_protocol(tmp_path, capsys):
    from bench.text_tables import main

    def row(name, label, mean, **run):
        return {"name": name, "label": label, "mean": mean, "ci95": 0.01, "seeds": [0], "ci_over": "x",
                "minutes_per_run": [1.0], "cpu_minutes_per_run": [0.5],
                "reference": [{"source": "CPFT (Zhang et al. 2021)", "value": 80.86}],
                "runs": [{"seed": 0, "cells": run.get("cells"), "oos": run.get("oos")}]}

    rows = [row("banking77-5shot", "ours", 0.84),
            row("held", "ProtoNet", 0.9, cells={"5-way 1-shot": {"mean": 0.9, "ci95": 0.01}}),
            row("clinc150-5shot", "oos", 0.87, oos={"in_scope_accuracy": 0.8, "oos_recall": 0.5,
                                                    "oos_precision": 0.6, "threshold": 0.3})]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    text = main([str(path)])
    assert "| ours | 84.00 ± 1.00 |" in text and "80.86 (CPFT)" in text
    assert "| held | ProtoNet | 90.00 ± 1.00 |" in text
    assert "| clinc150-5shot (seed 0) | oos | 80.00 | 50.00 | 60.00 | 0.300 |" in text
