"""quickstudy search with several workers on one study: PostgreSQL (a real, throw-away server), Optuna's
journal file, a worker killed mid-trial, failed and pruned trials, run folders that never collide."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from _postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from quickstudy.automl import storage as storage_module
from quickstudy.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"

# Sinusoid MAML, 4 meta-steps validated at steps 2 and 4: a trial takes a fraction of a second.
SEARCH = {
    "name": "workers", "seed": 0,
    "data": {"dataset": "sinusoid"},
    "task": {"shots": 5, "queries": 5, "meta_batch": 2},
    "model": {"name": "mlp", "in_features": 1, "out_features": 1, "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "train": {"steps": 4, "val_every": 2, "val_episodes": 4, "checkpoint_every": 100, "log_every": 2},
    "eval": {"batch_size": 4},
    "search": {
        "direction": "minimize", "metric": "loss",
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "none"},  # every trial that runs to its end completes: the counts below are exact
        "params": {
            "algorithm.inner_lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    },
}


@pytest.fixture
def search_file(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(SEARCH))
    return path


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test():
    """A test that fails early must not leave a worker training (one of them trains for a million steps)."""
    yield
    while _STARTED:
        worker = _STARTED.pop()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def _worker(config: Path, storage: str, out: Path, seed: int, trials: int, *extra: str) -> subprocess.Popen:
    """``python -m quickstudy search`` in a process of its own, importing the code under test."""
    env = {**os.environ, "QUICKSTUDY_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "quickstudy", "search", str(config), *extra, "--trials", str(trials),
               "--storage", storage, "--out", str(out), "--seed", str(seed), "--json"]
    _STARTED.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return _STARTED[-1]


def _finish(worker: subprocess.Popen) -> dict:
    stdout, stderr = worker.communicate(timeout=300)
    assert worker.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def _search_here(capsys, config: Path, storage: str, out: Path, seed: int, trials: int, *extra: str) -> dict:
    """A worker in this process (the one that carries on after a kill: no second start-up to wait for)."""
    capsys.readouterr()
    assert main(["search", str(config), *extra, "--trials", str(trials), "--storage", storage, "--out", str(out),
                 "--seed", str(seed), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_shared_study(storage, out: Path, expected: int) -> None:
    """``expected`` trials, all complete, each with its own number and its own run folder."""
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    assert len(trials) == expected
    assert [t.state.name for t in trials] == ["COMPLETE"] * expected
    assert len({t.number for t in trials}) == expected
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == expected
    assert all((Path(d) / "config.yaml").exists() for d in run_dirs)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials


def test_two_workers_share_one_postgres_study(search_file, tmp_path, postgres_url):  # noqa: F811
    out = tmp_path / "out"
    workers = [_worker(search_file, postgres_url, out, 1, 3), _worker(search_file, postgres_url, out, 2, 2)]
    summaries = [_finish(w) for w in workers]
    _check_shared_study(postgres_url, out, 5)
    # Both workers may count 5 trials (the first to stop sees the other's last one still RUNNING); the worker
    # that stopped last saw every trial complete.
    last = max(summaries, key=lambda s: s["states"]["COMPLETE"])
    assert last["trials"] == 5 and last["states"]["COMPLETE"] == 5
    assert last["storage"] == postgres_url and last["heartbeat_s"] == 60


def test_two_workers_share_one_journal_file(search_file, tmp_path):
    out, journal = tmp_path / "out", tmp_path / "study.journal"
    workers = [_worker(search_file, f"journal:{journal}", out, seed, 2) for seed in (1, 2)]
    for worker in workers:
        _finish(worker)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    _check_shared_study(storage, out, 4)


def _wait_for_running_trial(storage: str, worker: subprocess.Popen, deadline_s: float = 120):
    """The worker's trial once it is RUNNING and has reported a validation (so it is mid-trial)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[1][-3000:]
        try:
            trials = optuna.load_study(study_name="workers", storage=storage).trials
        except KeyError:  # the worker has not created the study yet
            trials = []
        running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("the first worker never reported a validation")


def test_worker_killed_mid_trial_leaves_the_postgres_study_usable(search_file, tmp_path, postgres_url,  # noqa: F811
                                                                   capsys):
    out = tmp_path / "out"
    # The first worker's trial would train for a long time; it is killed after its first validation.
    doomed = _worker(search_file, postgres_url, out, 1, 1, "train.steps=1000000", "--heartbeat", "1")
    killed = _wait_for_running_trial(postgres_url, doomed)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=60)
    assert optuna.load_study(study_name="workers", storage=postgres_url).trials[killed.number].state.name == "RUNNING"
    time.sleep(3)  # past the grace period (2 x 1 s) since the killed worker's last heartbeat

    summary = _search_here(capsys, search_file, postgres_url, out, 2, 2, "--heartbeat", "1")
    trials = optuna.load_study(study_name="workers", storage=postgres_url).trials
    assert trials[killed.number].state.name == "FAIL"  # failed by the heartbeat check, not left RUNNING
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"  # run again, same parameters
    assert retried[0].params == killed.params
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1, "RUNNING": 0, "WAITING": 0}
    assert summary["best_trial"] != killed.number
    rows = {row["number"]: row for row in json.loads((out / "search.json").read_text())["trials_detail"]}
    assert "worker stopped" in rows[killed.number]["error"]
    assert rows[retried[0].number]["retry_of"] == killed.number
    assert rows[retried[0].number]["run_dir"] != rows[killed.number]["run_dir"]


def test_worker_killed_mid_trial_leaves_a_journal_study_usable(search_file, tmp_path, capsys):
    """Optuna's journal storage has no heartbeat: the killed worker's trial stays RUNNING, and the next
    worker goes on around it; the trial is reported as RUNNING and never as the best."""
    out, url = tmp_path / "out", f"journal:{tmp_path / 'study.journal'}"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal")))
    doomed = _worker(search_file, url, out, 1, 1, "train.steps=1000000")
    killed = _wait_for_running_trial(storage, doomed)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=60)

    summary = _search_here(capsys, search_file, url, out, 2, 2)
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 0, "RUNNING": 1, "WAITING": 0}
    assert summary["best_trial"] != killed.number and summary["heartbeat_s"] is None
    assert (out / "best.yaml").exists()


def test_failed_and_pruned_trials_are_recorded(tmp_path, monkeypatch, capsys):
    """Enqueued trials (Optuna's own way to ask for given values): two good ones, one that diverges to a
    huge but finite loss (pruned at its first validation), one whose loss is NaN and one that raises a
    runtime error (both FAIL, with their errors, and the worker goes on)."""
    raw = {**SEARCH, "search": {**SEARCH["search"], "pruner": {"name": "median", "n_startup_trials": 2},
                                "params": {"algorithm.inner_lr": {"type": "float", "low": 1e-3, "high": 1e31,
                                                                  "log": True}}}}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="workers", storage=url, direction="minimize")
    for inner_lr in (0.01, 0.02, 1.0, 1e30, 0.05):
        study.enqueue_trial({"algorithm.inner_lr": inner_lr})

    import quickstudy.experiment as experiment

    build_learner = experiment.build_learner

    def build_or_run_out_of_memory(config, sources):
        if config.algorithm.inner_lr == 0.05:
            raise RuntimeError("out of memory (simulated)")
        return build_learner(config, sources)

    monkeypatch.setattr(experiment, "build_learner", build_or_run_out_of_memory)
    out = tmp_path / "out"
    assert main(["search", str(config), "--trials", "5", "--storage", url, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 2, "RUNNING": 0, "WAITING": 0}
    assert summary["best_trial"] == 1
    rows = json.loads((out / "search.json").read_text())["trials_detail"]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert list(rows[2]["curve"]) == ["2"]  # stopped at its first validation
    assert rows[3]["error"].startswith("NonFiniteLossError: non-finite loss")
    assert rows[4]["error"] == "RuntimeError: out of memory (simulated)"
    assert "trial 4 failed: RuntimeError: out of memory (simulated)" in captured.err
    assert "Traceback" not in captured.err


def test_a_worker_whose_trial_was_failed_by_another_says_why(search_file, tmp_path, monkeypatch, capsys):
    """A worker cut off from the database past the grace period finds its trial failed by another worker's
    heartbeat check when it reports the result: a one-line error naming --heartbeat, not a traceback."""
    import quickstudy.experiment as experiment

    url = f"sqlite:///{tmp_path / 'study.db'}"
    build_learner = experiment.build_learner

    def build_while_another_worker_fails_the_trial(config, sources):
        storage = optuna.storages.RDBStorage(url)
        running = [t for t in optuna.load_study(study_name="workers", storage=storage).trials
                   if t.state.name == "RUNNING"]
        storage.set_trial_state_values(running[0]._trial_id, optuna.trial.TrialState.FAIL)
        return build_learner(config, sources)

    monkeypatch.setattr(experiment, "build_learner", build_while_another_worker_fails_the_trial)
    assert main(["search", str(search_file), "--trials", "1", "--storage", url, "--out", str(tmp_path / "out"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another worker marked this worker's running trial failed" in err and "--heartbeat" in err
    assert err.count("\n") == 1


def test_a_new_study_in_a_used_output_folder_overwrites_no_run_folder(search_file, tmp_path):
    out = tmp_path / "out"
    run_dirs = []
    for db in ("first.db", "second.db"):  # two studies (two storages) writing into one output folder
        assert main(["search", str(search_file), "--trials", "1", "--storage", f"sqlite:///{tmp_path / db}",
                     "--out", str(out), "--quiet"]) == 0
        run_dirs.append(optuna.load_study(study_name="workers", storage=f"sqlite:///{tmp_path / db}")
                        .trials[0].user_attrs["run_dir"])
    assert run_dirs == [str(out / "trials" / "0000"), str(out / "trials" / "0000-1")]


def test_trials_zero_writes_the_summary_of_an_existing_study(search_file, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["search", str(search_file), "--trials", "2", "--storage", url, "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(search_file), "--trials", "0", "--storage", url, "--out", str(tmp_path / "b"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"] == 2 and (tmp_path / "b" / "best.yaml").exists()
    missing = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["search", str(search_file), "--trials", "0", "--storage", missing, "--out", str(tmp_path / "c")]) == 2
    assert "study 'workers' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("storage, message", [
    ("redis://localhost", "no database driver for 'redis'"),
    ("not a url", "not a storage URL; expected sqlite:///PATH, postgresql://"),
    ("postgresql://someone:secret@127.0.0.1:{port}/db", "cannot connect"),
    ("journal:{tmp}/missing/study.journal", "does not exist"),
])
def test_storage_errors_are_one_line(search_file, tmp_path, capsys, storage, message):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = storage.format(port=port, tmp=tmp_path)
    assert main(["search", str(search_file), "--trials", "1", "--storage", storage, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert "secret" not in err  # a password never reaches the screen


def test_postgresql_without_its_driver_names_the_extra(search_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(storage_module, "_has_module", lambda name: name != "psycopg")
    url = "postgresql://someone@127.0.0.1:5432/db"
    assert main(["search", str(search_file), "--trials", "1", "--storage", url, "--out", str(tmp_path)]) == 2
    assert "PostgreSQL needs the psycopg driver: pip install 'quickstudy[automl]'" in capsys.readouterr().err


def test_a_trial_trains_again_to_the_same_validation_curve(search_file, tmp_path):
    """What a search reproduces, whatever the workers did: each trial's own training, from its config.yaml."""
    from quickstudy.experiment import train_run

    out = tmp_path / "out"
    assert main(["search", str(search_file), "--trials", "1", "--out", str(out), "--quiet"]) == 0
    trial = json.loads((out / "search.json").read_text())["trials_detail"][0]
    again = train_run(Path(trial["run_dir"]) / "config.yaml", out=tmp_path / "again", progress=False)
    rows = [line.split(",") for line in (again / "metrics.csv").read_text().splitlines()[1:]]
    curve = {row[0]: float(row[2]) for row in rows if row[1] == "val"}
    assert curve == trial["curve"]  # bit for bit (same thread count)
