"""Every subcommand over a table of bad inputs: exit code 2 and one line ``quickstudy CMD: error: ...`` naming
what is wrong, never a traceback; an unexpected failure says where to report it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import quickstudy as qs
from quickstudy.cli import build_parser, main

from _runs import cli, write_config
from test_config_loading import alias_bomb


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained tiny run, its config, image folders and CSV files the rows below spoil one way each."""
    root = tmp_path_factory.mktemp("bad-inputs")
    config = write_config(root)
    run = root / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    glyphs = qs.data.Glyphs(split="test")
    for name, classes in (("support", 3), ("one_class", 1)):
        for c in range(classes):
            (root / name / f"class{c}").mkdir(parents=True)
            Image.fromarray(glyphs.examples_of(c)[0, 0].numpy()).save(root / name / f"class{c}" / "a.png")
    (root / "query").mkdir()
    Image.fromarray(glyphs.examples_of(0)[1, 0].numpy()).save(root / "query" / "q.png")
    (root / "empty_query").mkdir()
    (root / "broken_support" / "only").mkdir(parents=True)
    (root / "broken_support" / "other").mkdir(parents=True)
    (root / "broken_support" / "only" / "a.png").write_bytes(b"not a png")
    (root / "broken_support" / "other" / "b.png").write_bytes(b"not a png either")
    (root / "a_file").write_text("not a folder")
    texts = {
        "empty.yaml": "", "list.yaml": "- 1\n- 2\n", "syntax.yaml": "train: {steps: [1, 2}\n",
        "dup.yaml": "train: {steps: 3}\ntrain: {steps: 4}\n", "bomb.yaml": alias_bomb(8),
        "kind.yaml": "kind: spaceships\n", "stepz.yaml": "train: {stepz: 3}\n",
        "no_search.yaml": yaml.safe_dump({"name": "s", "data": {"dataset": "glyphs"}}),
        "table.csv": "a,b,label\n1,2,x\n3,4,y\n5,6,\n7,8,x\n9,1,y\n",
        "one_class.csv": "a,label\n1,x\n2,x\n3,x\n", "empty.csv": "",
        "clean.csv": "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n",
        "one_message.csv": "text,label\nhi,greet\nbye,leave\nciao,leave\n",
        "no_text.csv": "message,label\nhi,greet\n",
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "sinusoid_dir").mkdir()
    (root / "sinusoid_dir" / "sinusoid-maml").mkdir()
    (root / "sinusoid_dir" / "sinusoid-maml" / "config.yaml").write_text("name: old\n")
    return root, config, run


def spoiled_run(base, tmp_path, how: str):
    """A copy of the trained run, damaged as ``how`` says."""
    root, _, run = base
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if how == "flipped":
        state = torch.load(copy / "last.pt", weights_only=True)
        weight = next(v for k, v in state["model"].items() if k.endswith("weight") and v.numel() > 64)
        data = bytearray((copy / "last.pt").read_bytes())
        at = bytes(data).find(weight.numpy().tobytes()[-64:])
        data[at + 3] ^= 0x40
        (copy / "last.pt").write_bytes(bytes(data))
    elif how == "truncated":
        data = (copy / "last.pt").read_bytes()
        (copy / "last.pt").write_bytes(data[: len(data) // 3])
    elif how == "no_checkpoints":
        for name in ("last.pt", "last.prev.pt", "best.pt"):
            (copy / name).unlink(missing_ok=True)
    elif how == "bad_config":
        (copy / "config.yaml").write_text("train: {steps: [\n")
    return copy


SEARCH_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "search" / "protonet-glyphs.yaml"

# (command, arguments, what the message must say); {root}, {config}, {run}, {search_config} and {spoiled:HOW}
# are filled in
ROWS = [
    ("train", ["{root}/missing.yaml"], "missing.yaml' does not exist"),
    ("train", ["{root}/empty.yaml", "--out", "{root}/new"], "empty.yaml is empty"),
    ("train", ["{root}/list.yaml", "--out", "{root}/new"], "must be a mapping"),
    ("train", ["{root}/syntax.yaml", "--out", "{root}/new"], "not valid YAML"),
    ("train", ["{root}/dup.yaml", "--out", "{root}/new"], "duplicate key 'train'"),
    ("train", ["{root}/bomb.yaml", "--out", "{root}/new"], "aliases"),
    ("train", ["{root}/kind.yaml", "--out", "{root}/new"], "'spaceships' is not a task kind"),
    ("train", ["{root}/stepz.yaml", "--out", "{root}/new"], "unknown key 'train.stepz'"),
    ("train", ["{config}", "--out", "{root}/new", "train.steps=0"], "key 'train.steps'"),
    ("train", ["{config}", "--out", "{root}/new", "--steps", "0"], "argument --steps"),
    ("train", ["{config}", "--out", "{root}/new", "train.steps"], "must look like key.path=value"),
    ("train", ["{config}", "--out", "{root}/new", "model.bogus=1"], "unknown key 'model.bogus'"),
    ("train", ["{config}", "--out", "{root}/new", "data.dataset=omniglot", "data.root={root}/nowhere",
               "data.download=false"], "nowhere' does not exist"),
    ("train", ["{config}", "--out", "{run}"], "already holds a run"),
    ("train", ["{config}", "--out", "{root}/a_file"], "a_file' is not a folder"),
    ("resume", ["{root}/nowhere"], "not a run folder"),
    ("resume", ["{spoiled:flipped}"], "checksum"),
    ("resume", ["{spoiled:truncated}"], "truncated"),
    ("resume", ["{spoiled:no_checkpoints}"], "no checkpoint"),
    ("resume", ["{spoiled:bad_config}"], "not valid YAML"),
    ("resume", ["{run}", "--steps", "2"], "step 4"),
    ("eval", ["{root}/nowhere"], "not a run folder"),
    ("eval", ["{spoiled:flipped}", "--checkpoint", "last"], "last.pt"),
    ("eval", ["{spoiled:no_checkpoints}"], "no checkpoint"),
    ("eval", ["{run}", "eval.episodes=3"], "takes no key=value overrides"),
    ("eval", ["{run}", "--episodes", "0"], "argument --episodes"),
    ("adapt", ["{root}/nowhere", "--support", "{root}/support", "--query", "{root}/query"], "not a run folder"),
    ("adapt", ["{run}", "--support", "{root}/missing", "--query", "{root}/query"], "missing' does not exist"),
    ("adapt", ["{run}", "--support", "{root}/one_class", "--query", "{root}/query"], "two classes"),
    ("adapt", ["{run}", "--support", "{root}/support", "--query", "{root}/empty_query"], "holds no images"),
    ("adapt", ["{run}", "--support", "{root}/support", "--query", "{root}/missing_query"], "missing_query"),
    ("adapt", ["{run}", "--support", "{root}/broken_support", "--query", "{root}/query"], "cannot read image"),
    ("adapt", ["{spoiled:flipped}", "--support", "{root}/support", "--query", "{root}/query", "--checkpoint",
               "last"], "checksum"),
    ("report", ["{root}/nowhere"], "not a run folder"),
    ("report", ["{root}/a_file"], "not a run folder"),
    ("report", ["{root}/support"], "not a run folder"),
    ("demo", ["--quick", "--out", "{root}/a_file"], "a_file' is not a folder"),
    ("demo", ["--quick", "--out", "{root}/sinusoid_dir"], "already holds a run"),
    ("search", ["{root}/missing.yaml", "--trials", "1"], "missing.yaml' does not exist"),
    ("search", ["{root}/no_search.yaml", "--trials", "1", "--out", "{root}/s"], "search"),
    ("search", ["{search_config}", "--trials", "0", "--out", "{root}/s"], "--trials"),
    ("recommend", ["{root}/missing.csv", "--target", "label"], "missing.csv' does not exist"),
    ("recommend", ["{root}/table.csv", "--target", "nope"], "no column 'nope'"),
    ("recommend", ["{root}/table.csv", "--target", "label"], "missing value(s), in data row(s) 3"),
    ("recommend", ["{root}/one_class.csv", "--target", "label"], "fewer than two classes"),
    ("recommend", ["{root}/empty.csv", "--target", "label"], "empty.csv"),
    ("recommend", ["{root}/clean.csv", "--target", "label", "--top", "0"], "--top"),
    ("intents", ["train", "{root}/missing.csv", "--out", "{root}/i"], "missing.csv: no such file"),
    ("intents", ["train", "{root}/no_text.csv", "--out", "{root}/i"], "no column 'text'"),
    ("intents", ["train", "{root}/one_message.csv", "--out", "{root}/i"], "label 'greet' (row 2) has 1 example"),
    ("intents", ["train", "{root}/clean.csv", "--out", "{root}/i", "--oos-threshold", "2"], "oos.threshold"),
    ("intents", ["predict", "{run}", "hello"], "not a text intent run"),
    ("users", ["recommend", "{root}/nowhere", "--ratings", "{root}/clean.csv"], "not a run folder"),
    ("users", ["recommend", "{run}", "--ratings", "{root}/clean.csv"], "is a run of kind 'episodes'"),
]


def subcommands() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_the_table_covers_every_subcommand():
    assert {row[0] for row in ROWS} == subcommands()


@pytest.mark.parametrize("command,arguments,expected", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_exit_code_2(base, tmp_path, capsys, command, arguments, expected):
    root, config, run = base
    argv = [command]
    for item in arguments:
        if item.startswith("{spoiled:"):
            argv.append(str(spoiled_run(base, tmp_path, item[len("{spoiled:"):-1])))
        else:
            argv.append(item.format(root=root, config=config, run=run, search_config=SEARCH_CONFIG))
    code, out, err = cli(capsys, *argv)
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"quickstudy {command}: error: "), err
    assert expected in lines[0], err
    assert out == ""


def test_an_unexpected_failure_says_where_to_report(monkeypatch, tmp_path, capsys):
    import quickstudy.runs as runs

    def broken(*args, **kwargs):
        raise RuntimeError("something no one expected")

    monkeypatch.setattr(runs, "report_run", broken)
    code, _, err = cli(capsys, "report", tmp_path)
    assert code == 1 and "Traceback" not in err
    assert "quickstudy report: internal error: RuntimeError: something no one expected" in err
    assert "please report" in err and "QUICKSTUDY_DEBUG=1" in err
    monkeypatch.setenv("QUICKSTUDY_DEBUG", "1")
    with pytest.raises(RuntimeError, match="no one expected"):
        main(["report", str(tmp_path)])
