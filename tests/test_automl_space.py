"""The search: section of a search config: valid spaces load, bad ones fail naming the parameter."""

import copy

import pytest

from quickstudy.automl.space import active_params, load_search_config, sample_overrides
from quickstudy.config import ConfigError

BASE = {
    "name": "space-test",
    "data": {"dataset": "sinusoid"},
    "task": {"shots": 5, "queries": 5, "meta_batch": 2},
    "model": {"name": "mlp", "in_features": 1, "out_features": 1, "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "train": {"steps": 4},
    "search": {
        "direction": "minimize", "metric": "loss",
        "params": {
            "algorithm.name": {"type": "categorical", "choices": ["maml", "protonet"]},
            "algorithm.inner_lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True,
                                   "when": {"algorithm.name": ["maml"]}},
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "task.meta_batch": {"type": "int", "low": 1, "high": 4},
        },
    },
}


def with_param(key, spec):
    raw = copy.deepcopy(BASE)
    raw["search"]["params"][key] = spec
    return raw


def test_valid_space_loads_and_conditions_apply():
    space, base = load_search_config(raw=copy.deepcopy(BASE))
    assert "search" not in base and space.direction == "minimize"
    assert "algorithm.inner_lr" not in active_params(space, {"algorithm.name": "protonet"}, base)
    picks = sample_overrides(space, base, lambda key, p: p.choices[1] if key == "algorithm.name" else p.low)
    assert picks == {"algorithm.name": "protonet", "train.lr": 1e-4, "task.meta_batch": 1}


@pytest.mark.parametrize("key, spec, message", [
    ("train.lr", {"type": "float", "low": 1.0, "high": 0.1}, "must be less than high"),
    ("train.lr", {"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log scale needs low > 0"),
    ("train.lr", {"type": "float", "low": 0.1, "high": 1.0, "scale": "log"}, "unknown key 'search.params.train.lr.scale'"),
    ("train.lr", {"type": "gaussian", "low": 0.1, "high": 1.0}, "search.params.train.lr"),
    ("model.name", {"type": "categorical", "choices": []}, "search.params.model.name"),
    ("train.lrr", {"type": "float", "low": 0.1, "high": 1.0}, "unknown key 'train.lrr'"),
    ("lr", {"type": "float", "low": 0.1, "high": 1.0}, "must be a dotted config key"),
    # inner_lr without `when` reaches protonet, whose constructor does not take it
    ("algorithm.inner_lr", {"type": "float", "low": 0.01, "high": 0.1}, "unknown key 'algorithm.inner_lr'"),
])
def test_bad_parameters_name_the_key(key, spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_search_config(raw=with_param(key, spec))


def test_missing_search_section_and_file():
    raw = {k: v for k, v in BASE.items() if k != "search"}
    with pytest.raises(ConfigError, match="no 'search:' section"):
        load_search_config(raw=raw)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_search_config("/nonexistent/search.yaml")


def test_shipped_search_configs_validate():
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "search").glob("*.yaml"))
    assert paths
    for path in paths:
        space, base = load_search_config(path)
        assert base["protocol"] and space.params
