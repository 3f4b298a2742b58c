"""Meta-RL end to end: a short 2D navigation run shows adaptation improving the return, seeded runs repeat
exactly (also across a resume), the CLI trains/evaluates/reports RL configs, bad configs name the key and
missing optional simulators say what to install."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from quickstudy.cli import main
from quickstudy.config import ConfigError
from quickstudy.rl import build_rl, evaluate_rl_run, load_rl_config, make_family, train_rl
from quickstudy.training import load_checkpoint

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "rl").glob("*.yaml"))

TINY = {"kind": "rl", "name": "tiny-nav", "seed": 3, "env": {"name": "navigation2d", "horizon": 20},
        "policy": {"hidden": [8, 8]}, "algorithm": {"inner_lr": 0.1},
        "train": {"iterations": 3, "meta_batch": 3, "episodes_per_task": 4, "checkpoint_every": 1},
        "eval": {"tasks": 4, "episodes_per_task": 4, "max_steps": 2}}


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


def test_short_navigation_run_adapts():
    raw = {"kind": "rl", "name": "nav-ci", "seed": 0, "env": {"name": "navigation2d", "horizon": 100},
           "policy": {"hidden": [24, 24]}, "algorithm": {"inner_lr": 0.1, "max_kl": 0.03},
           "train": {"iterations": 8, "meta_batch": 8, "episodes_per_task": 8},
           "eval": {"tasks": 10, "episodes_per_task": 10, "max_steps": 1}}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = train_rl(None, raw=raw, out=tmp, progress=False)
        result = evaluate_rl_run(run, progress=False)
    by_step = result["return_by_step"]
    before, after = by_step["0"], by_step["1"]
    assert after["mean"] > before["mean"] + 10, by_step  # about -38 -> -14 on this seed
    assert after["mean"] - after["ci95"] > before["mean"] + before["ci95"], "the 95% CIs overlap"


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_seeded_runs_repeat_exactly(tmp_path, outer):
    raw = dict(TINY, algorithm={"inner_lr": 0.1, "outer": outer, "ppo_epochs": 2})
    a = train_rl(None, raw=raw, out=tmp_path / "a", progress=False)
    b = train_rl(None, raw=raw, out=tmp_path / "b", progress=False)
    assert (a / "metrics.csv").read_text().splitlines()[1:] != []
    rows = lambda run: [line.rsplit(",", 2)[0] for line in (run / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert rows(a) == rows(b)  # every column but the timings
    for key, value in _weights(a).items():
        assert torch.equal(value, _weights(b)[key]), key


def test_resume_gives_the_uninterrupted_run(tmp_path):
    straight = train_rl(None, raw=TINY, out=tmp_path / "straight", progress=False)
    stopped = train_rl(None, raw=dict(TINY, train=dict(TINY["train"], iterations=2)), out=tmp_path / "resumed",
                       progress=False)
    resumed = train_rl(None, out=stopped, resume=True, iterations=3, progress=False)
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(resumed)[key]), key
    assert len((resumed / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_cli_train_eval_report(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--json", "--quiet", "train.iterations=2"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(run)
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "rl" and set(result["return_by_step"]) == {"0", "1", "2"}
    assert result["trained_iterations"] == 2 and (run / "eval.json").is_file()
    assert main(["eval", str(run), "--json", "eval.inner_lr=[0.1,0.05]"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_inner_lr"] == [0.1, 0.05]
    assert main(["eval", str(run), "--json", "train.iterations=9"]) == 2  # only eval.* keys at evaluation
    assert "only eval.* keys" in capsys.readouterr().err
    assert main(["resume", str(run), "--steps", "3", "--json", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert {Path(f).name for f in files} >= {"return_vs_iteration.png", "return_vs_steps.png", "report.md"}


@pytest.mark.parametrize("override, message", [
    ("algorithm.inner_lrr=0.1", "unknown key 'algorithm.inner_lrr'"),
    ("algorithm.outer=sgd", "key 'algorithm.outer'"),
    ("train.meta_batch=0", "key 'train.meta_batch'"),
    ("algorithm.max_kl=-1", "key 'algorithm.max_kl'"),
    ("eval.tasks=1", "key 'eval.tasks'"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_rl_config(raw=TINY, overrides=[override])


def test_bad_family_arguments_are_clear():
    config, _ = load_rl_config(raw=TINY, overrides=["env.name=nowhere"])
    with pytest.raises(ValueError, match="unknown task family 'nowhere'"):
        build_rl(config)
    config, _ = load_rl_config(raw=TINY, overrides=["env.horizon=0"])
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        build_rl(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_rl_configs_validate(path):
    config, resolved = load_rl_config(path)
    assert config.kind == "rl" and config.protocol and resolved["name"] == config.name
    needs = {"halfcheetah": "mujoco", "metaworld": "metaworld"}
    missing = [pkg for prefix, pkg in needs.items() if config.env.name.startswith(prefix)
               and importlib.util.find_spec(pkg) is None]
    if missing:
        with pytest.raises(ImportError, match=rf"pip install 'quickstudy\[{missing[0]}\]'"):
            build_rl(config)
    elif not config.env.name.startswith("metaworld"):  # building ML1 downloads nothing but is slow
        build_rl(config)


@pytest.mark.parametrize("name, extra", [("halfcheetah-vel", "mujoco"), ("halfcheetah-dir", "mujoco"),
                                         ("metaworld-ml1", "metaworld"), ("metaworld-ml45", "metaworld")])
def test_optional_simulators(name, extra):
    package = "mujoco" if extra == "mujoco" else "metaworld"
    if importlib.util.find_spec(package) is None:
        with pytest.raises(ImportError, match=rf"pip install 'quickstudy\[{extra}\]'"):
            make_family(name)
        return
    if extra == "metaworld":
        pytest.skip("metaworld is installed: its benchmarks take long to construct; covered by the smoke runs")
    family = make_family(name, horizon=5)
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    env = family.make_env(tasks, 1)
    obs = env.reset(torch.Generator().manual_seed(0))
    assert obs.shape == (2, 1, family.obs_dim)
    obs, reward, done, _ = env.step(torch.zeros(2, 1, family.action_dim))
    assert reward.shape == (2, 1) and torch.isfinite(reward).all()


@pytest.mark.parametrize("name", ["halfcheetah-vel", "halfcheetah-dir"])
def test_direct_mujoco_stepping_matches_gymnasium(name):
    """HalfCheetah episodes stepped by MujocoVecEnv (direct mj_step, batched rewards, threads) must be the
    gymnasium env's episodes: same observations and task rewards for the same seeds and actions."""
    if importlib.util.find_spec("mujoco") is None:
        pytest.skip("needs the mujoco extra")
    family = make_family(name, horizon=20)
    tasks = family.sample_tasks(3, torch.Generator().manual_seed(1))

    def episodes(env):
        obs = [env.reset(torch.Generator().manual_seed(0))]
        actions = torch.Generator().manual_seed(5)
        rewards = []
        for _ in range(20):
            o, r, _, _ = env.step(2 * torch.randn(3, 12, family.action_dim, generator=actions))  # some clipped
            obs.append(o)
            rewards.append(r)
        env.close()
        return torch.stack(obs), torch.stack(rewards)

    gym_obs, gym_rewards = episodes(family.make_gym_env(tasks, 12))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the threaded path when the machine has the cores
    try:
        direct_obs, direct_rewards = episodes(family.make_env(tasks, 12))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(direct_obs, gym_obs)
    torch.testing.assert_close(direct_rewards, gym_rewards, rtol=1e-6, atol=1e-5)
    assert gym_rewards.abs().mean() > 0.1


def test_rl_speed_bench_runs(tmp_path):
    from bench import rl_speed

    out = tmp_path / "rl_speed.json"
    assert rl_speed.main(["--tasks", "2", "--episodes", "2", "--horizon", "5", "--repeats", "1", "--iterations", "1",
                          "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {"env/vectorized", "sampling/per-episode loop", "meta-iteration/per-task loop"} <= set(rows)


@pytest.mark.parametrize("name, extra", [("halfcheetah-dir", "mujoco"), ("metaworld-ml10", "metaworld")])
def test_missing_simulator_says_what_to_install(monkeypatch, name, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda pkg, *a: None if pkg == extra else real(pkg, *a))
    with pytest.raises(ImportError, match=rf"needs the '{extra}' package.*pip install 'quickstudy\[{extra}\]'"):
        make_family(name)


def test_docs_python_example_runs():
    import re

    text = (Path(__file__).parent.parent / "docs" / "rl.md").read_text()
    code = re.search(r"From Python:\n\n```python\n(.*?)```", text, re.S).group(1)
    code = (code.replace("range(50)", "range(1)").replace("sample_tasks(20, g)", "sample_tasks(2, g)")
            .replace("params(), 20, g", "params(), 2, g").replace("fast, 20, g", "fast, 2, g")
            .replace("sample_tasks(40,", "sample_tasks(3,")
            .replace("episodes=20, max_steps=3", "episodes=2, max_steps=1")
            .replace("Navigation2D()", "Navigation2D(horizon=10)"))
    namespace: dict = {}
    exec(compile(code, "docs/rl.md", "exec"), namespace)
    assert namespace["r"].steps == 1
