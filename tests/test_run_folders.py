"""Run folders under misuse: nothing a user trained is lost, a failed command changes no file, one process owns a
folder at a time, and the files a later command trusts (test episodes) match the run they serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from quickstudy.run_lock import LOCK_NAME, RunFolderInUse, hold_run_folder
from quickstudy.runs import evaluate_run

from _runs import cli, snapshot, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step tiny run with an evaluation (eval.json, test_episodes.pt)."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder)
    run = folder / "run"
    from quickstudy.cli import main

    assert main(["train", str(config), "--out", str(run), "--quiet", "--eval", "--json"]) == 0
    return config, run


@pytest.fixture
def run_copy(trained, tmp_path):
    config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return config, copy


def test_train_into_a_folder_that_holds_a_run_is_refused(run_copy, capsys):
    config, run = run_copy
    before = snapshot(run)
    code, _, err = cli(capsys, "train", config, "--out", run, "--quiet", "train.steps=2")
    assert code == 2
    assert "already holds a run" in err and "--overwrite" in err and "quickstudy resume" in err
    assert snapshot(run) == before, "the refused command changed the run folder"


def test_overwrite_replaces_the_run_and_drops_its_old_results(run_copy, tmp_path, capsys):
    _, run = run_copy
    two_way = write_config(tmp_path, "two.yaml", name="two-way", task={"ways": 2, "shots": 2})
    code, _, err = cli(capsys, "train", two_way, "--out", run, "--quiet", "--overwrite")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "two-way"
    assert not (run / "eval.json").exists() and not (run / "test_episodes.pt").exists()
    fresh = tmp_path / "fresh"
    assert cli(capsys, "train", two_way, "--out", fresh, "--quiet")[0] == 0
    assert evaluate_run(run, progress=False)["mean"] == evaluate_run(fresh, progress=False)["mean"]


@pytest.mark.parametrize("arguments", [
    ["model.bogus=1"],                        # refused: the folder holds a run
    ["model.bogus=1", "--overwrite"],         # refused: an unknown model argument, found before any write
    ["train.steps=0", "--overwrite"],         # refused: nothing to train
    ["algorithm.name=nope", "--overwrite"],
], ids=["no-overwrite", "bad-model-key", "zero-steps", "bad-algorithm"])
def test_a_failed_train_changes_no_file(run_copy, capsys, arguments):
    config, run = run_copy
    before = snapshot(run)
    code, _, err = cli(capsys, "train", config, "--out", run, "--quiet", *arguments)
    assert code == 2 and "error:" in err
    assert snapshot(run) == before
    assert cli(capsys, "eval", run, "--json")[0] == 0, "the run is still usable"


def test_a_failed_train_into_a_new_folder_leaves_no_folder(tmp_path, capsys):
    config = write_config(tmp_path)
    target = tmp_path / "new" / "run"
    code, _, err = cli(capsys, "train", config, "--out", target, "--quiet", "model.bogus=1")
    assert code == 2 and "bogus" in err
    assert not target.exists() and not (tmp_path / "new").exists()


def test_a_rejected_resume_leaves_the_config_as_it_was(run_copy, capsys):
    _, run = run_copy
    before = snapshot(run)
    code, _, err = cli(capsys, "resume", run, "--steps", "2", "--quiet")
    assert code == 2 and "step 4" in err
    assert snapshot(run) == before
    code, _, err = cli(capsys, "resume", run, "--steps", "6", "--quiet")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6


@pytest.mark.parametrize("command", [["resume", "{run}", "--quiet"], ["eval", "{run}"],
                                     ["train", "{config}", "--out", "{run}", "--overwrite", "--quiet"]])
def test_a_folder_held_by_another_process_is_refused(run_copy, capsys, command):
    config, run = run_copy
    argv = [a.format(run=run, config=config) for a in command]
    with hold_run_folder(run):
        before = snapshot(run)
        code, _, err = cli(capsys, *argv)
        assert snapshot(run) == before
    assert code == 2
    assert f"in use by process {os.getpid()}" in err and str(run) in err


def test_the_lock_is_exclusive_and_released(tmp_path):
    with hold_run_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunFolderInUse, match=str(os.getpid())):
            with hold_run_folder(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_run_folder(tmp_path):  # free again
        pass


def test_a_dead_processs_lock_is_taken_over_and_its_temp_files_removed(run_copy, capsys):
    _, run = run_copy
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / LOCK_NAME).write_text(f"{gone.pid} somehost quickstudy train\n")
    stray = run / ".last.pt.x1y2z3.tmp"  # what a kill -9 during a checkpoint write leaves
    stray.write_bytes(b"half a checkpoint")
    code, _, err = cli(capsys, "resume", run, "--steps", "5", "--quiet")
    assert code == 0, err
    assert not stray.exists() and not (run / LOCK_NAME).exists()


# --------------------------------------------------------------------------- test episodes keyed by the task
@pytest.mark.parametrize("section,key,value", [
    ("task", "test_ways", 2), ("task", "test_shots", 2), ("task", "test_queries", 3), ("eval", "seed", 7),
    ("data", "test_split", "val"), ("eval", "batch_size", 2),
])
def test_test_episodes_are_regenerated_when_the_task_changes(run_copy, tmp_path, section, key, value):
    _, run = run_copy
    assert (run / "test_episodes.pt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh)
    (fresh / "test_episodes.pt").unlink()
    edited, clean = evaluate_run(run, progress=False), evaluate_run(fresh, progress=False)
    assert (edited["mean"], edited["ci95"]) == (clean["mean"], clean["ci95"])


def test_test_episodes_are_reused_when_nothing_changed(run_copy):
    _, run = run_copy
    first = (run / "test_episodes.pt").stat().st_mtime_ns
    evaluate_run(run, progress=False)
    assert (run / "test_episodes.pt").stat().st_mtime_ns == first


def test_thread_count_honours_the_variables_of_jobs_launched_side_by_side(monkeypatch):
    """Two jobs started together on an idle machine both see a load of 0: each must take the share the
    launcher gave it (OMP_NUM_THREADS), not every core, or their OpenMP barriers thrash."""
    from quickstudy.runs import choose_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    for variable in ("QUICKSTUDY_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    assert choose_threads() == 8                      # nothing said: every idle core
    monkeypatch.setattr("os.getloadavg", lambda: (5.2, 0.0, 0.0))
    assert choose_threads() == 3                      # the cores the load leaves
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == 2                      # the launcher's share wins over the load
    monkeypatch.setenv("QUICKSTUDY_THREADS", "1")
    assert choose_threads() == 1                      # and quickstudy's own variable over both
    monkeypatch.setenv("QUICKSTUDY_THREADS", "two")
    with pytest.raises(ValueError, match=r"QUICKSTUDY_THREADS must be a whole number.*'two'"):
        choose_threads()


def test_thread_count_under_torchrun_ignores_its_default_omp_setting(monkeypatch):
    """torchrun sets OMP_NUM_THREADS=1 in each process it starts: that is not a choice, so each of its P
    processes on the machine takes 1/P of the idle cores; QUICKSTUDY_THREADS still overrides."""
    from quickstudy.runs import choose_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.delenv("QUICKSTUDY_THREADS", raising=False)
    for variable, value in {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(variable, value)
    assert choose_threads() == 4
    monkeypatch.setenv("QUICKSTUDY_THREADS", "3")
    assert choose_threads() == 3
