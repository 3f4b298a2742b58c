"""Text data readers: the published splits' counts, a user's CSV/JSONL, and every bad input named clearly."""

import json

import numpy as np
import pytest

from quickstudy.data import intents
from quickstudy.data.paths import find_data_file

HAVE_FEWSHOT = find_data_file("banking77/test/seq.in", "fewshot_intent") is not None
HAVE_CLINC = find_data_file("data_full.json", "clinc150") is not None
HAVE_BANKING = find_data_file("train.csv", "banking77") is not None
needs_fewshot = pytest.mark.skipif(not HAVE_FEWSHOT, reason="the fewshot_intent splits are not in the data folder")


@needs_fewshot
@pytest.mark.parametrize("name, intents_count, test_count", [("banking77", 77, 3080), ("clinc150", 150, 4500),
                                                             ("hwu64", 64, 1076)])
def test_fixed_split_counts(name, intents_count, test_count):
    test = intents.fewshot_split(name, "test")
    assert len(test.classes) == intents_count and len(test) == test_count
    for shots in (5, 10):
        train = intents.fewshot_split(name, f"train_{shots}")
        assert train.classes == test.classes  # the same intent set in every split
        assert (train.counts() == shots).all()
    five, ten = intents.fewshot_split(name, "train_5"), intents.fewshot_split(name, "train_10")
    assert five.texts == ten.texts[::2]  # train_5 = train_10[::2] (SOURCE.md)


@needs_fewshot
def test_fixed_split_keeps_label_case_and_lines():
    train = intents.fewshot_split("banking77", "train_5")
    assert "Refund_not_showing_up" in train.classes
    assert train.label_names[0] == sorted(train.classes)[0]  # rows grouped by label in sorted order


@pytest.mark.skipif(not HAVE_CLINC, reason="clinc150/data_full.json is not in the data folder")
def test_clinc150_full_and_domains():
    assert len(intents.clinc150("train")) == 15000
    assert len(intents.clinc150("oos_test")) == 1000 and intents.clinc150("oos_test").classes == ("oos",)
    domains = intents.clinc150_domains()
    assert len(domains) == 10 and all(len(v) == 15 for v in domains.values())
    assert sorted(i for v in domains.values() for i in v) == list(intents.clinc150("test").classes)


@pytest.mark.skipif(not HAVE_BANKING, reason="banking77/train.csv is not in the data folder")
def test_banking77_full():
    train = intents.banking77("train")
    assert len(train) == 10003 and len(train.classes) == 77
    assert intents.banking77("test").counts().tolist() == [40] * 77


def test_missing_data_lists_places_and_address(tmp_path, monkeypatch):
    monkeypatch.setattr(intents, "find_data_file", lambda *args, **kwargs: None)  # as on a machine without data
    with pytest.raises(FileNotFoundError) as error:
        intents.fewshot_split("hwu64", "test", root=tmp_path / "nowhere")
    message = str(error.value)
    assert "hwu64/test/seq.in" in message and "jianguoz/Few-Shot-Intent-Detection" in message
    assert str(tmp_path / "nowhere") in message  # every place looked in is listed


def test_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('text,intent\n"hello, there",greet\nbye now,leave\nhi,greet\nsee you,leave\n')
    data, rows = intents.read_table(csv_file, "text", "intent", return_rows=True)
    assert data.classes == ("greet", "leave") and data.texts[0] == "hello, there"
    assert data.labels.tolist() == [0, 1, 0, 1] and rows == [2, 3, 4, 5]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"msg": t, "y": y}) for t, y in [("a b", "x"), ("c d", "y")]) + "\n")
    assert intents.read_table(jsonl, "msg", "y").classes == ("x", "y")


def test_empty_text_names_the_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\n   ,a\n")
    with pytest.raises(ValueError, match=r"d\.csv: row 3: empty text in column 'text'"):
        intents.read_table(path)


def test_missing_column_names_it_and_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("message,label\nhello,a\n")
    with pytest.raises(ValueError, match=r"d\.csv: no column 'text' \(--text-column\); the columns are 'label', 'message'"):
        intents.read_table(path)


def test_non_utf8_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nhello,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv: not UTF-8 text \(byte \d+, line 3\)"):
        intents.read_table(path)
    with pytest.raises(ValueError, match="latin1.csv: not UTF-8"):
        intents.read_lines(path)


def test_label_with_one_example_names_label_and_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\nhi,a\nbye,b\n")
    data, rows = intents.read_table(path, return_rows=True)
    with pytest.raises(ValueError, match=r"d\.csv: label 'b' \(row 4\) has 1 example; training needs at least 2"):
        intents.check_min_examples(data, 2, "training", rows)


def test_restrict_and_concat_keep_labels_apart():
    a = intents.from_pairs([("x", "balance"), ("y", "other")], "clinc150")
    b = intents.from_pairs([("z", "balance")], "banking77")
    both = intents.TextDataset.concat([a, b], "both")
    assert both.classes == ("banking77/balance", "clinc150/balance", "clinc150/other")
    only = a.restrict(["other"])
    assert only.texts == ("y",) and only.labels.tolist() == [0]
    with pytest.raises(ValueError, match="unknown labels"):
        a.restrict(["nope"])


def test_bad_choice_is_named():
    with pytest.raises(ValueError, match="split must be one of"):
        intents.fewshot_split("banking77", "train_7")
    assert np.array_equal(intents.from_pairs([("a", "x")], "t").counts(), [1])
