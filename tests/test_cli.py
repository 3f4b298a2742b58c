"""The command line end to end on the embedded glyphs: train, eval, resume, adapt, report, demo."""

import csv
import json

import pytest
import yaml
from PIL import Image

import quickstudy as qs
from quickstudy.cli import main

TINY = {
    "name": "tiny",
    "protocol": "test",
    "data": {"dataset": "glyphs"},
    "task": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
    "model": {"name": "conv4", "hidden": 8, "stride_variant": True},
    "algorithm": {"name": "protonet"},
    "train": {"steps": 4, "val_every": 2, "val_episodes": 4, "checkpoint_every": 2, "log_every": 1},
    "eval": {"episodes": 6, "batch_size": 3},
}


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert qs.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "train", "eval", "resume", "adapt", "report"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "usage: quickstudy " + command in capsys.readouterr().out


def test_train_eval_resume_report(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    out = run_json(capsys, ["train", str(config_file), "--out", str(run), "--json", "--quiet", "task.queries=3"])
    assert out["run_dir"] == str(run)
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["task"]["queries"] == 3 and resolved["eval"]["seed"] == 1234  # overrides and defaults written

    first = run_json(capsys, ["eval", str(run), "--json"])
    assert first["metric"] == "accuracy" and 0.0 <= first["mean"] <= 1.0 and first["episodes"] == 6
    assert {"precision", "recall", "f1"} <= set(first["metrics"])
    again = run_json(capsys, ["eval", str(run), "--json"])
    assert again["mean"] == first["mean"], "the saved test episodes make evaluation repeatable"
    assert (run / "test_episodes.pt").is_file() and (run / "eval.json").is_file()

    run_json(capsys, ["resume", str(run), "--steps", "6", "--json", "--quiet"])
    steps = [int(row["step"]) for row in csv.DictReader(open(run / "metrics.csv")) if row["split"] == "train"]
    assert max(steps) == 6

    files = run_json(capsys, ["report", str(run), "--json"])["files"]
    assert any(f.endswith(".png") for f in files) and any(f.endswith("report.md") for f in files)


def test_adapt_labels_a_users_folders(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    run_json(capsys, ["train", str(config_file), "--out", str(run), "--json", "--quiet"])
    glyphs = qs.data.Glyphs(split="test")
    support, query = tmp_path / "support", tmp_path / "query"
    for c in range(3):
        (support / f"class{c}").mkdir(parents=True)
        examples = glyphs.examples_of(c)
        Image.fromarray(examples[0, 0].numpy()).save(support / f"class{c}" / "a.png")
        query.mkdir(exist_ok=True)
        Image.fromarray(examples[1, 0].numpy()).save(query / f"q{c}.png")
    rows = run_json(capsys, ["adapt", str(run), "--support", str(support), "--query", str(query), "--json"])["predictions"]
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["q0.png", "q1.png", "q2.png"]
    assert all(r["label"] in {"class0", "class1", "class2"} and 0 < r["probability"] <= 1 for r in rows)

    assert main(["adapt", str(run), "--support", str(tmp_path / "missing"), "--query", str(query)]) == 2
    assert "missing" in capsys.readouterr().err


def test_bad_config_fails_with_the_key(tmp_path, capsys):
    bad = dict(TINY, train={"stepz": 3})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'train.stepz'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_demo_quick_json(capsys):
    payload = run_json(capsys, ["demo", "--quick", "--json"])
    results = payload["results"]
    assert set(results) == {"sinusoid-maml", "sinusoid-pretrained", "glyphs-protonet", "glyphs-fomaml"}
    assert results["sinusoid-maml"]["metric"] == "mse" and "10" in results["sinusoid-maml"]["mse_by_step"]
    assert 0.0 <= results["glyphs-protonet"]["mean"] <= 1.0
