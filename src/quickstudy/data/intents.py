"""Text data for intent detection: (text, label) pairs with class names.

Readers, each returning a :class:`TextDataset`:

* :func:`fewshot_split` — the fixed few-shot splits of BANKING77, CLINC150 and HWU64 used by the published
  papers (DialoGLUE / DNNC / CPFT): ``fewshot_intent/<name>/<split>/{seq.in,label}``, ``split`` one of
  ``train_5``, ``train_10``, ``valid``, ``test``.
* :func:`clinc150` — the full CLINC150 (Larson et al. 2019): ``train``, ``val``, ``test`` and the
  out-of-scope splits ``oos_train``, ``oos_val``, ``oos_test``; :func:`clinc150_domains` its 10 domains.
* :func:`banking77` — the full BANKING77 (Casanueva et al. 2020): ``train``, ``test``.
* :func:`read_table` — a user's CSV or JSONL file with a text column and a label column.

Files are looked for like every quickstudy data set (``root``, ``$QUICKSTUDY_DATA``, ``shared/data`` beside the
checkout, the user cache; see :mod:`quickstudy.data.paths`); when they are missing the error lists the places
and the official address. Bad input fails naming the file, row and column: a non-UTF-8 byte, a missing
column, an empty text (:func:`check_texts`), a label with too few examples (:func:`check_min_examples`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._validation import check_choice, check_int
from .paths import find_data_file, search_dirs

__all__ = ["TextDataset", "FEWSHOT_DATASETS", "FEWSHOT_SPLITS", "fewshot_split", "clinc150", "clinc150_domains",
           "banking77", "read_table", "read_lines", "check_texts", "check_min_examples"]

FEWSHOT_DATASETS = ("banking77", "clinc150", "hwu64")
FEWSHOT_SPLITS = ("train_5", "train_10", "valid", "test")
CLINC150_SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
BANKING77_SPLITS = ("train", "test")
OUT_OF_SCOPE = "oos"

_OFFICIAL = {
    "fewshot_intent": "the fixed splits of github.com/jianguoz/Few-Shot-Intent-Detection (Datasets/<NAME>/<split>/)",
    "clinc150": "data/data_full.json and data/domains.json of github.com/clinc/oos-eval",
    "banking77": "banking_data/train.csv and test.csv of github.com/PolyAI-LDN/task-specific-datasets",
}


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels: ``labels[i]`` indexes ``classes`` (the sorted label names).

    ``rows`` are the 1-based line/row numbers in the source file (for error messages); ``source`` names it.
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = "texts"
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"TextDataset({self.name!r}, {len(self.texts)} texts, {len(self.classes)} labels)"

    @property
    def label_names(self) -> list[str]:
        return [self.classes[int(i)] for i in self.labels]

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def restrict(self, class_names: Iterable[str], name: str | None = None) -> "TextDataset":
        """Only the examples of ``class_names`` (relabelled to their sorted order)."""
        keep = set(class_names)
        unknown = sorted(keep - set(self.classes))
        if unknown:
            raise ValueError(f"{self.name}: unknown labels {unknown[:5]}")
        names = [self.classes[int(i)] for i in self.labels]
        pairs = [(t, n) for t, n in zip(self.texts, names) if n in keep]
        return from_pairs(pairs, name or self.name, self.source)

    @staticmethod
    def concat(parts: Sequence["TextDataset"], name: str, prefix_labels: bool = True) -> "TextDataset":
        """One data set from several; ``prefix_labels`` keeps same-named intents of different data sets apart
        (``"clinc150/balance"``)."""
        pairs = []
        for part in parts:
            prefix = f"{part.name}/" if prefix_labels else ""
            pairs += [(t, prefix + n) for t, n in zip(part.texts, part.label_names)]
        return from_pairs(pairs, name, ", ".join(p.source for p in parts))


def from_pairs(pairs: Sequence[tuple[str, str]], name: str, source: str = "",
               classes: Sequence[str] | None = None) -> TextDataset:
    """A :class:`TextDataset` from ``(text, label name)`` pairs; ``classes`` fixes the label set and order."""
    classes = tuple(sorted({label for _, label in pairs})) if classes is None else tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted({label for _, label in pairs} - set(index))
    if missing:
        raise ValueError(f"{name}: labels {missing[:5]} are not among the {len(classes)} known labels")
    labels = np.array([index[label] for _, label in pairs], dtype=np.int64)
    return TextDataset(tuple(t for t, _ in pairs), labels, classes, name=name, source=source)


# --------------------------------------------------------------------------- checks
def check_texts(texts: Sequence[str], source: str, rows: Sequence[int] | None = None, what: str = "row") -> None:
    """Every text non-empty after stripping whitespace; else ``ValueError`` naming the file and the row."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            row = rows[i] if rows is not None else i + 1
            raise ValueError(f"{source}: {what} {row}: empty text; every example needs some words")


def check_min_examples(dataset: TextDataset, minimum: int, purpose: str = "training",
                       rows: Sequence[int] | None = None) -> None:
    """Every label has at least ``minimum`` examples; else ``ValueError`` naming the label (and its row)."""
    check_int("check_min_examples", "minimum", minimum)
    counts = dataset.counts()
    for c in np.flatnonzero(counts < minimum):
        where = ""
        if rows is not None:
            first = int(np.flatnonzero(dataset.labels == c)[0])
            where = f" (row {rows[first]})"
        raise ValueError(f"{dataset.source or dataset.name}: label {dataset.classes[c]!r}{where} has "
                         f"{int(counts[c])} example{'s' if counts[c] != 1 else ''}; {purpose} needs at least "
                         f"{minimum} per label")


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}, line {line}): save the file as UTF-8") from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 text file (one message a line), stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [line.strip() for line in _read_text_file(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path}: the file holds no text lines")
    return lines


# --------------------------------------------------------------------------- published data
def _missing(name: str, filename: str, root) -> FileNotFoundError:
    places = "\n".join(f"  {label}: {path / filename}" for label, path in search_dirs(name, root))
    return FileNotFoundError(f"{name}: {filename} not found. Looked in:\n{places}\n"
                             f"Get it from {_OFFICIAL[name]} and put it in one of these places "
                             f"(or set $QUICKSTUDY_DATA)")


def _locate(name: str, filename: str, root) -> Path:
    path = find_data_file(filename, name, root)
    if path is None:
        raise _missing(name, filename, root)
    return path


def fewshot_split(dataset: str, split: str, root: str | os.PathLike | None = None) -> TextDataset:
    """One fixed few-shot split: ``dataset`` in ``banking77, clinc150, hwu64``; ``split`` in ``train_5, train_10,
    valid, test``. Label names keep their case; the label set is the sorted names of the split."""
    check_choice("fewshot_split", "dataset", dataset, FEWSHOT_DATASETS)
    check_choice("fewshot_split", "split", split, FEWSHOT_SPLITS)
    texts_path = _locate("fewshot_intent", f"{dataset}/{split}/seq.in", root)
    labels_path = texts_path.with_name("label")
    if not labels_path.is_file():
        raise _missing("fewshot_intent", f"{dataset}/{split}/label", root)
    texts = _read_text_file(texts_path).split("\n")
    labels = _read_text_file(labels_path).split("\n")
    if texts and texts[-1] == "" and labels and labels[-1] == "":  # the final newline
        texts, labels = texts[:-1], labels[:-1]
    if len(texts) != len(labels):
        raise ValueError(f"{texts_path}: {len(texts)} lines but {labels_path.name} has {len(labels)}; "
                         "the two files must be line-aligned")
    texts = [t.strip() for t in texts]
    check_texts(texts, str(texts_path), what="line")
    return from_pairs(list(zip(texts, (lab.strip() for lab in labels))), f"{dataset}", str(texts_path.parent))


def _clinc_json(root) -> tuple[dict, Path]:
    path = _locate("clinc150", "data_full.json", root)
    try:
        return json.loads(_read_text_file(path)), path
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def clinc150(split: str, root: str | os.PathLike | None = None, include_oos_label: bool = False) -> TextDataset:
    """A split of the full CLINC150: ``train`` (15,000), ``val`` (3,000), ``test`` (4,500) over the 150
    in-scope intents, or ``oos_train`` / ``oos_val`` / ``oos_test`` (100 / 100 / 1,000, label ``oos``)."""
    check_choice("clinc150", "split", split, CLINC150_SPLITS)
    data, path = _clinc_json(root)
    pairs = [(str(text).strip(), str(label)) for text, label in data[split]]
    check_texts([t for t, _ in pairs], f"{path} [{split}]", what="item")
    return from_pairs(pairs, "clinc150", f"{path}:{split}")


def clinc150_domains(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The 10 CLINC150 domains -> their 15 intents each (``domains.json``), domains sorted by name."""
    path = _locate("clinc150", "domains.json", root)
    try:
        raw = json.loads(_read_text_file(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return {str(domain): [str(i) for i in intents] for domain, intents in sorted(raw.items())}


def banking77(split: str, root: str | os.PathLike | None = None) -> TextDataset:
    """A split of the full BANKING77: ``train`` (10,003 rows, imbalanced) or ``test`` (3,080, 40 per intent)."""
    check_choice("banking77", "split", split, BANKING77_SPLITS)
    path = _locate("banking77", f"{split}.csv", root)
    return read_table(path, "text", "category", name="banking77")


# --------------------------------------------------------------------------- your own file
def read_table(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
               name: str | None = None, return_rows: bool = False):
    """A CSV (header row; ``.csv``/``.tsv`` or any other name) or JSONL (``.jsonl``/``.ndjson``: one JSON object
    a line) file -> :class:`TextDataset`. Errors name the file, the row and the column. With ``return_rows`` also
    the 1-based row number (CSV: file line of the record's start, the header being line 1) of every example."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    content = _read_text_file(path)
    records: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: row {number}: not valid JSON ({error.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}: row {number}: expected a JSON object, got {type(item).__name__}")
            records.append((number, item))
        columns = set().union(*(item.keys() for _, item in records)) if records else set()
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(content.splitlines(keepends=True), delimiter=delimiter)
        try:
            columns = set(reader.fieldnames or [])
            for item in reader:
                records.append((reader.line_num, item))
        except csv.Error as error:
            raise ValueError(f"{path}: row {reader.line_num}: not valid CSV ({error})") from None
    if not records:
        raise ValueError(f"{path}: no rows")
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in columns:
            raise ValueError(f"{path}: no column {column!r} ({flag}); the columns are "
                             f"{', '.join(repr(c) for c in sorted(columns, key=str))}")
    pairs, rows = [], []
    for number, item in records:
        text, label = item.get(text_column), item.get(label_column)
        if text is None or not str(text).strip():
            raise ValueError(f"{path}: row {number}: empty text in column {text_column!r}; every example needs "
                             "some words")
        if label is None or not str(label).strip():
            raise ValueError(f"{path}: row {number}: empty label in column {label_column!r}")
        pairs.append((str(text).strip(), str(label).strip()))
        rows.append(number)
    dataset = from_pairs(pairs, name or path.stem, str(path))
    return (dataset, rows) if return_rows else dataset
