"""``quickstudy intents``: a model trained on a tiny CSV labels its own training texts; every bad input is one line
naming the file, row or column (exit code 2); the message without the 'text' extra names it."""

import importlib.util
import json

import pytest

from quickstudy.cli import main
from quickstudy.text.extra import MissingTextExtra, require_text_extra, text_extra_available

from _text_toy import TOY

needs_text = pytest.mark.skipif(not text_extra_available(), reason="needs the 'text' extra: pip install 'quickstudy[text]'")


def write_csv(path, rows, header="text,intent"):
    path.write_text(header + "\n" + "".join(f"{t},{label}\n" for t, label in rows))
    return path


@needs_text
def test_trained_on_a_tiny_csv_it_predicts_its_own_texts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QUICKSTUDY_CACHE", str(tmp_path / "cache"))
    data = write_csv(tmp_path / "tiny.csv", TOY)
    run = tmp_path / "run"
    assert main(["intents", "train", str(data), "--label-column", "intent", "--out", str(run), "--json",
                 "--oos-threshold", "0.05"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["intents"] == 3 and trained["train_texts"] == 12
    texts = [t for t, _ in TOY]
    assert main(["intents", "predict", str(run), *texts, "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["label"] for p in predictions] == [label for _, label in TOY]
    assert all(0 < p["probability"] <= 1 and p["out_of_scope"] is False for p in predictions)
    messages = tmp_path / "messages.txt"
    messages.write_text("my card has not arrived\n\nhow do I top up\n")
    assert main(["intents", "predict", str(run), "--file", str(messages)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "label\tprobability\tout_of_scope\ttext" and len(lines) == 3  # blank lines skipped
    assert lines[1].startswith("arrival\t") and lines[2].startswith("top_up\t")
    from quickstudy.text.model import IntentModel

    model = IntentModel.load(run)
    model.threshold = 0.999  # no message is that sure: every one is flagged out of scope, its intent kept
    flagged = model.predict(["my card has not arrived"])[0]
    assert flagged["out_of_scope"] is True and flagged["label"] == "oos" and flagged["intent"] == "arrival"


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_empty_text_names_the_row(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [("hello", "a"), ("hi", "a"), ("", "b"), ("bye", "b")])
    err = error_of(capsys, ["intents", "train", str(data), "--label-column", "intent", "--out", str(tmp_path / "r")])
    assert "error:" in err and "d.csv: row 4: empty text in column 'text'" in err


def test_missing_column_is_named(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [("hello", "a"), ("hi", "a")])
    err = error_of(capsys, ["intents", "train", str(data), "--label-column", "label", "--out", str(tmp_path / "r")])
    assert "d.csv: no column 'label' (--label-column)" in err


def test_label_with_one_example_is_named(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [("hello", "a"), ("hi", "a"), ("bye", "b")])
    err = error_of(capsys, ["intents", "train", str(data), "--label-column", "intent", "--out", str(tmp_path / "r")])
    assert "label 'b' (row 4) has 1 example; training needs at least 2 per label" in err


def test_non_utf8_files_are_named(tmp_path, capsys):
    data = tmp_path / "latin1.csv"
    data.write_bytes("text,intent\ncaf\xe9,a\n".encode("latin-1"))
    err = error_of(capsys, ["intents", "train", str(data), "--label-column", "intent", "--out", str(tmp_path / "r")])
    assert "latin1.csv: not UTF-8 text" in err
    messages = tmp_path / "m.txt"
    messages.write_bytes(b"\xff\xfe bad\n")
    run = tmp_path / "run"
    run.mkdir()
    err = error_of(capsys, ["intents", "predict", str(run), "--file", str(messages)])
    assert "m.txt: not UTF-8 text" in err


def test_predicting_with_a_run_not_trained_on_text(tmp_path, capsys):
    run = tmp_path / "image-run"
    run.mkdir()
    (run / "config.yaml").write_text("name: omniglot\n")
    (run / "last.pt").write_bytes(b"")
    err = error_of(capsys, ["intents", "predict", str(run), "hello"])
    assert f"{run}: not a text intent run (no intent_model.pt)" in err


def test_without_the_extra_the_message_names_it(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(MissingTextExtra, match=r"pip install 'quickstudy\[text\]'"):
        require_text_extra()
    data = write_csv(tmp_path / "d.csv", [("hello", "a"), ("hi", "a"), ("bye", "b"), ("ciao", "b")])
    err = error_of(capsys, ["intents", "train", str(data), "--label-column", "intent", "--out", str(tmp_path / "r")])
    assert "needs the 'text' extra (missing: sentence_transformers): pip install 'quickstudy[text]'" in err


@pytest.mark.parametrize("command", ["train", "predict"])
def test_intents_subcommands_have_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["intents", command, "--help"])
    assert stop.value.code == 0
    assert f"usage: quickstudy intents {command}" in capsys.readouterr().out
