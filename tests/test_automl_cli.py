"""quickstudy recommend / search on the command line: --json prints one object, bad input a clean error."""

import json

import numpy as np
import pytest

from quickstudy.automl.knowledge import DATA_DIR
from quickstudy.automl.portfolio import PORTFOLIO
from quickstudy.cli import main

needs_kb = pytest.mark.skipif(not (DATA_DIR / "scores.csv").is_file(),
                              reason="the knowledge base (bench/knowledge_base.py) has not been built")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("csv") / "small.csv"
    lines = ["height,weight,colour,species"]
    for i in range(60):
        species = ["cat", "dog", "fox"][i % 3]
        lines.append(f"{rng.normal(i % 3):.3f},{rng.normal():.3f},{['red', 'blue'][i % 2]},{species}")
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_kb
def test_recommend_json(small_csv, capsys):
    assert main(["recommend", str(small_csv), "--target", "species", "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert out["rows"] == 60 and out["classes"] == 3 and out["features"] == 4  # colour one-hot encoded
    assert len(out["recommendations"]) == 3
    names = {c.name for c in PORTFOLIO}
    assert all(r["configuration"] in names for r in out["recommendations"])
    assert all(0.0 <= r["predicted_balanced_accuracy"] <= 1.0 for r in out["recommendations"])
    assert out["metafeatures"]["summary"]["nr_class"] == 3
    assert len(out["nearest_datasets"]) == 5


@needs_kb
def test_recommend_text(small_csv, capsys):
    assert main(["recommend", str(small_csv), "--target", "species", "--method", "best-default", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert "top 2 configurations (best-default" in text and "nr_class" in text


def test_recommend_errors(small_csv, capsys):
    assert main(["recommend", str(small_csv), "--target", "kind"]) == 2
    assert "no column 'kind'" in capsys.readouterr().err
    assert main(["recommend", str(small_csv) + ".missing", "--target", "species"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["search", "recommend"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "usage: quickstudy " + command in capsys.readouterr().out


def test_search_rejects_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: {params: {train.lr: {type: float, low: 1, high: 0.1}}}\n")
    assert main(["search", str(path), "--trials", "1", "--out", str(tmp_path / "o")]) == 2
    assert "must be less than high" in capsys.readouterr().err


def test_missing_automl_extra_gives_an_install_hint(monkeypatch, capsys):
    import importlib.util

    from quickstudy.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    assert main(["search", "configs/search/protonet-glyphs.yaml", "--trials", "1"]) == 2
    assert "pip install 'quickstudy[automl]'" in capsys.readouterr().err


@needs_kb
def test_recommend_evaluate_runs_a_warm_started_search(small_csv, capsys):
    assert main(["recommend", str(small_csv), "--target", "species", "--evaluate", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    search = out["search"]
    trials = search["trials"]
    assert [t["step"] for t in trials] == [1, 2, 3] and search["rows_used"] == 60
    assert len({t["configuration"] for t in trials}) == 3
    # before any score is seen the search evaluates the head of its recommended list
    assert trials[0]["configuration"] == out["recommendations"][0]["configuration"]
    assert all(0.0 <= t["balanced_accuracy"] <= 1.0 for t in trials)
    assert search["best"]["balanced_accuracy"] == max(t["balanced_accuracy"] for t in trials)
    assert main(["recommend", str(small_csv), "--target", "species", "--evaluate", "2"]) == 0
    text = capsys.readouterr().out
    assert "warm-started search, 2 evaluations" in text and "best found:" in text
