"""Every shipped config validates and builds its learner; bad configs fail naming the key."""

from pathlib import Path

import pytest
import torch

import quickstudy as qs
from quickstudy.config import ConfigError, load_config
from quickstudy.experiment import TaskSources, build_learner

# configs/rl/ (meta-RL, kind: rl), configs/search/ (a search: section), configs/text/ (kind: text) and configs/users/
# (kind: users) are validated by their own tests: tests/test_rl_training.py, tests/test_automl_space.py,
# tests/test_text_kind.py and tests/test_users_kind.py
CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml")
                 if p.parent.name not in ("rl", "search", "text", "users"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    for algorithm in ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet"):
        for cell in ("5w1s", "5w5s", "20w1s", "20w5s"):
            assert f"{algorithm}-{cell}" in names
    assert "maml-k5" in names
    for algorithm in ("matchingnet", "relationnet", "imaml", "mamlpp"):  # the four Omniglot cells their papers report
        for cell in ("5w1s", "5w5s", "20w1s", "20w5s"):
            assert f"{algorithm}-{cell}" in names
    for algorithm in ("metaoptnet-svm", "metaoptnet-ridge", "boil", "protomaml", "simpleshot", "transductive-finetune"):
        for cell in ("5w1s", "20w1s"):
            assert f"{algorithm}-{cell}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_its_learner(path):
    config, resolved = load_config(path)
    assert resolved["name"] == config.name
    assert config.protocol, "every shipped config says which protocol it follows"
    regression = config.data.dataset == "sinusoid"
    sources = TaskSources(None, None, None, task_type="regression" if regression else "classification",
                          num_train_classes=None if regression else 4112, in_channels=1, image_size=28)
    learner = build_learner(config, sources)
    assert isinstance(learner, qs.MetaLearner)
    if not regression:
        out = learner.model(torch.zeros(2, 1, 28, 28))
        expected = None if qs.algorithms.ALGORITHMS[config.algorithm.name].embedding_model else config.task.ways
        if expected is not None:
            assert out.shape == (2, expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown key 'train.stepz'"),
        ("train.steps=many", "key 'train.steps'"),
        ("task.ways=0", "key 'task.ways'"),
        ("algorithm.inner_lrr=0.1", "unknown key 'algorithm.inner_lrr'"),
        ("algorithm.inner_steps=two", "key 'algorithm.inner_steps'"),
        ("model.hiden=3", "unknown key 'model.hiden'"),
        ("data.dataset=cifar", "key 'data.dataset'"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config, _ = load_config(CONFIGS[0].parent / "maml-5w1s.yaml", overrides=[override])
        sources = TaskSources(None, None, None, "classification", 4112, 1, 28)
        build_learner(config, sources)
