"""The users task kind end to end on a tiny ratings file: config errors, train, resume, evaluate, report, and the
`users recommend` command with its clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _users_toy import toy_config, write_toy

from quickstudy.cli import main
from quickstudy.config import ConfigError
from quickstudy.runs import train_run
from quickstudy.training import load_checkpoint
from quickstudy.users import kind


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "melu"
    train_run(None, raw=toy_config(*files), out=out, progress=False)
    return out


def test_config_errors_name_the_key(files):
    with pytest.raises(ConfigError, match="unknown key 'task.shotz'"):
        kind.load_config(raw=toy_config(*files, task={"shotz": 3}))
    with pytest.raises(ConfigError, match="key 'split'.*needs split.cutoff"):
        kind.load_config(raw=toy_config(*files, split={"kind": "time"}))
    with pytest.raises(ConfigError, match="unknown baseline"):
        kind.load_config(raw=toy_config(*files, eval={"baselines": ["svd++"]}))
    config, resolved = kind.load_config(raw=toy_config(*files), overrides=["split.cutoff=2013-05-01"])
    assert resolved["split"]["cutoff"] == "2013-05-01" and resolved["kind"] == "users"


def test_train_writes_a_run_and_is_deterministic(run, files, tmp_path):
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "items.npz", "split.json"):
        assert (run / name).is_file(), name
    again = train_run(None, raw=toy_config(*files), out=tmp_path / "again", progress=False)
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(again / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_run(None, raw=toy_config(*files, seed=1), out=tmp_path / "other", progress=False)
    c = load_checkpoint(other / "last.pt")["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(files, tmp_path):
    config = toy_config(*files)
    whole = train_run(None, raw=config, out=tmp_path / "whole", progress=False)
    half = {**config, "train": {**config["train"], "steps": 3}}
    part = train_run(None, raw=half, out=tmp_path / "part", progress=False)
    train_run(None, out=part, resume=True, steps=6, progress=False)  # quickstudy resume RUN --steps 6
    a, b = load_checkpoint(whole / "last.pt")["model"], load_checkpoint(part / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_scores_every_method_on_the_same_users(run):
    result = kind.evaluate(run, episodes=None, progress=False)
    assert json.loads((run / "eval.json").read_text())["mean"] == result["mean"]
    assert result["shots"] == [3, 5] and result["method"] == "melu"
    for shots, block in result["by_shots"].items():
        assert set(block["methods"]) == {"melu", "global", "item", "user", "mf", "knn"}
        assert block["best_baseline"] == min(("global", "item", "user", "mf", "knn"),
                                             key=lambda b: block["methods"][b]["mae"]["mean"])
        per_user = result["per_user"][shots]
        assert all(len(per_user[m]["mae"]) == block["users"] for m in per_user)
        paired = block["paired"]["knn"]["mae"]["mean"]
        assert paired == pytest.approx(np.mean(per_user["melu"]["mae"]) - np.mean(per_user["knn"]["mae"]))
    assert kind.evaluate(run, episodes=None, progress=False)["by_shots"] == result["by_shots"]  # fixed test users
    text = kind.format_eval(result)
    assert "K = 3" in text and "melu - " in text and "nDCG@3" in text
    files = [p.name for p in kind.report(run)]
    assert "report.md" in files and "mae.png" in files
    report = (run / "report.md").read_text()
    assert "| melu |" in report and "## Curves" in report


def recommend(capsys, run, ratings, *extra):
    code = main(["users", "recommend", str(run), "--ratings", str(ratings), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_users_recommend_on_a_tiny_ratings_file(run, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("user,item,rating\nme,0000003,9\nme,0000007,2\nme,0000011,8\n")
    code, out, _ = recommend(capsys, run, mine, "--top", "5")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "rank,item,title,predicted_rating" and len(lines) == 6
    code, out, _ = recommend(capsys, run, mine, "--top", "40", "--json")
    payload = json.loads(out)
    items = [r["item"] for r in payload["recommendations"]]
    assert payload["user"] == "me" and payload["ratings"] == 3
    assert len(items) == 27 and not {"0000003", "0000007", "0000011"} & set(items)  # every unrated item, once
    predicted = [r["predicted_rating"] for r in payload["recommendations"]]
    assert predicted == sorted(predicted, reverse=True) and all(0 <= p <= 10 for p in predicted)
    assert payload["recommendations"][0]["title"].startswith("Movie ")
    dat = tmp_path / "mine.dat"
    dat.write_text("me::0000003::9::1370000000\nme::0000007::2::1370000100\nme::0000011::8::1370000200\n")
    assert json.loads(recommend(capsys, run, dat, "--top", "40", "--json")[1]) == payload


@pytest.mark.parametrize("text, message", [
    ("me,0000003,9\nme,9999999,7\n", "mine.csv, line 2: item '9999999' is not in the item catalogue"),
    ("me,0000003,9\nme,0000007,12\n", "mine.csv, line 2: rating 12 is outside the scale 0..10"),
    ("user,item,rating\nme,0000003,9\n", "mine.csv, line 2: user 'me' has only 1 rating; at least 2 are needed"),
    ("", "mine.csv: no ratings (the file is empty)"),
    ("me,0000003,9\nme;0000007;8\n", "mine.csv, line 2: expected user,item,rating[,timestamp]"),
    ("me,0000003,9\nyou,0000007,8\n", "holds the ratings of 2 users ('me', 'you'); pass --user ID"),
])
def test_users_recommend_bad_input_is_one_line_naming_the_line(run, tmp_path, capsys, text, message):
    mine = tmp_path / "mine.csv"
    mine.write_text(text)
    code, out, err = recommend(capsys, run, mine)
    assert code == 2 and out == ""
    assert err.startswith("quickstudy users: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_users_recommend_picks_one_user_of_many(run, tmp_path, capsys):
    mine = tmp_path / "two.csv"
    mine.write_text("me,0000003,9\nyou,0000007,8\nyou,0000009,3\n")
    code, out, _ = recommend(capsys, run, mine, "--user", "you", "--json")
    assert code == 0 and json.loads(out)["user"] == "you"


SHIPPED = sorted((Path(__file__).parent.parent / "configs" / "users").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_validate_and_build_their_learner(path):
    from quickstudy.algorithms import MetaLearner
    from quickstudy.users.build import build_learner

    config, resolved = kind.load_config(path)
    assert resolved["kind"] == "users" and config.protocol and config.name == path.stem
    assert config.train.time_limit is not None and config.train.time_limit <= 10  # the 10-minute training budget

    class Shape:  # the encoder's shape for MovieTweetings, without reading the data
        width = 1 + 25 + 3 + 4 + 25

        @staticmethod
        def model_shape():
            return {"items": 100, "genres": 25, "profile": 29}

    learner = build_learner(config, Shape(), 7.3)
    assert isinstance(learner, MetaLearner) and learner.task_type == "regression"
    assert learner.model(torch.zeros(3, Shape.width)).shape == (3, 1)


def test_readme_users_example_runs(files, tmp_path, monkeypatch):
    import re

    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## Recommendation for new users\n.*?```python\n(.*?)```", text, re.S).group(1)
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(*files)))
    (tmp_path / "my_ratings.csv").write_text("user,item,rating\nme,0000003,9\nme,0000007,2\n")
    code = code.replace("configs/users/melu-movietweetings.yaml", str(config))
    assert str(config) in code  # the example trains the shipped config; here the toy one
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"]["method"] == "melu" and len(namespace["top"]["recommendations"]) == 10
    assert (tmp_path / "runs" / "users" / "melu" / "eval.json").is_file()


def test_results_bench_goal_check_uses_paired_per_user_differences():
    from bench.users_results import goal

    rng = np.random.default_rng(0)
    base = rng.uniform(0.8, 1.4, size=200)

    def result(meta_mae, meta_ndcg):
        users = {"melu": {"mae": list(meta_mae), "rmse": list(meta_mae), "ndcg@3": list(meta_ndcg),
                          "ndcg@5": list(meta_ndcg)},
                 "knn": {"mae": list(base), "rmse": list(base), "ndcg@3": [0.6] * 200, "ndcg@5": [0.6] * 200}}
        methods = {m: {k: {"mean": float(np.mean(v)), "ci95": 0.0} for k, v in users[m].items()} for m in users}
        return {"method": "melu", "per_user": {"5": users},
                "by_shots": {"5": {"methods": methods, "best_baseline": "knn"}}, "train_seconds": 60.0}

    met = goal([result(base * 0.9 + rng.normal(0, 0.01, 200), 0.62 + rng.normal(0, 0.01, 200))])
    assert met["met"] and met["paired"]["mae"]["relative"] == pytest.approx(-0.1, abs=0.01)
    assert not goal([result(base * 0.97, 0.62 + rng.normal(0, 0.01, 200))])["met"]           # only 3% lower MAE
    assert not goal([result(base * 0.9, 0.6 + rng.normal(0, 0.05, 200))])["met"]            # nDCG@3 not higher


def test_the_command_line_runs_the_users_kind(files, tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(*files)))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet", "--json", "--steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(run)
    assert main(["resume", str(run), "--steps", "5", "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 5
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    text = capsys.readouterr().out
    assert "K = 3 (4 users)" in text and "knn" in text
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "users"
    assert main(["report", str(run)]) == 0
    assert "report.md" in capsys.readouterr().out
    assert main(["train", str(config), "--out", str(tmp_path / "bad"), "--quiet", "task.shotz=3"]) == 2
    assert "unknown key 'task.shotz'" in capsys.readouterr().err
