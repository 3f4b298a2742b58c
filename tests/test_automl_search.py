"""quickstudy search: a tiny study writes a trainable best.yaml, workers share one study, pruning prunes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from quickstudy.automl.search import PruningCallback
from quickstudy.cli import main
from quickstudy.config import load_config
from quickstudy.training import EvalResult

SEARCH = {
    "name": "tiny-search",
    "seed": 0,
    "data": {"dataset": "sinusoid"},
    "task": {"shots": 5, "queries": 5, "meta_batch": 2},
    "model": {"name": "mlp", "in_features": 1, "out_features": 1, "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "train": {"steps": 4, "val_every": 2, "val_episodes": 4, "checkpoint_every": 100, "log_every": 2},
    "eval": {"batch_size": 4},
    "search": {
        "direction": "minimize", "metric": "loss",
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "params": {
            "algorithm.name": {"type": "categorical", "choices": ["maml", "fomaml"]},
            "algorithm.inner_lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "model.hidden": {"type": "categorical", "choices": [[8], [8, 8]]},
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    },
}


@pytest.fixture
def search_file(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(SEARCH))
    return path


def test_tiny_search_writes_best_config(search_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", str(search_file), "--trials", "2", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert summary["trials"] == 2 and summary["states"]["COMPLETE"] >= 1
    config, _ = load_config(out / "best.yaml")  # ready for quickstudy train
    assert config.name == "tiny-search-best"
    assert config.algorithm.name == summary["best_params"]["algorithm.name"]
    assert config.train.lr == pytest.approx(summary["best_params"]["train.lr"])
    assert (out / "search.png").stat().st_size > 0
    detail = json.loads((out / "search.json").read_text())
    assert all(t["curve"] for t in detail["trials_detail"])  # validation reported at steps 2 and 4


def test_two_workers_share_one_sqlite_study(search_file, tmp_path):
    out, db = tmp_path / "shared", tmp_path / "study.db"
    env = {**os.environ, "QUICKSTUDY_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    workers = [subprocess.Popen([sys.executable, "-m", "quickstudy", "search", str(search_file), "--trials", "2",
                                 "--storage", f"sqlite:///{db}", "--out", str(out), "--seed", str(seed), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for seed in (1, 2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="tiny-search", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4  # 2 + 2 trials in one study
    assert len({t.number for t in study.trials}) == 4


class _FakeTrainer:
    pass


def test_pruning_callback_prunes_a_trial_falling_behind():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for good in (0.8, 0.9):  # two finished trials with high validation accuracy at every step
        trial = study.ask()
        callback = PruningCallback(trial, "accuracy")
        for step in (10, 20):
            callback.on_validation_end(_FakeTrainer(), step, EvalResult(good, 0.0, 1, metrics={"accuracy": good}))
        study.tell(trial, good)
    trial = study.ask()
    callback = PruningCallback(trial, "accuracy")
    with pytest.raises(optuna.TrialPruned):  # rigged: far below the median at the first report
        callback.on_validation_end(_FakeTrainer(), 10, EvalResult(0.2, 0.0, 1, metrics={"accuracy": 0.2}))
    trial = study.ask()
    PruningCallback(trial, "accuracy").on_validation_end(  # a good one is not pruned
        _FakeTrainer(), 10, EvalResult(0.95, 0.0, 1, metrics={"accuracy": 0.95}))


def test_unknown_metric_is_a_clear_error():
    study = optuna.create_study()
    callback = PruningCallback(study.ask(), "acuracy")
    with pytest.raises(ValueError, match="'acuracy' is not a validation metric"):
        callback.on_validation_end(_FakeTrainer(), 1, EvalResult(0.5, 0.0, 1, metrics={"accuracy": 0.5}))
