"""Meta-features: pymfe groups with graceful skipping and a time budget; episode-level task features."""

import numpy as np
import pytest

from quickstudy.automl.metafeatures import EPISODE_FEATURES, episode_features, extract_metafeatures


def small_dataset(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    X = rng.normal(size=(n, 4)) + y[:, None] * np.array([1.0, 0.5, 0.0, 0.0])
    return X, y


def test_general_and_statistical_in_process():
    X, y = small_dataset()
    mf = extract_metafeatures(X, y, groups=("general", "statistical"), time_budget=None)
    assert mf.values["nr_inst"] == 60 and mf.values["nr_attr"] == 4 and mf.values["nr_class"] == 3
    assert mf.values["nr_inst_full"] == 60
    assert all(np.isfinite(v) for v in mf.values.values())


def test_a_failing_measure_is_skipped_and_the_rest_kept(monkeypatch):
    from pymfe.statistical import MFEStatistical

    def broken(cls, N):  # pymfe passes arguments by name: keep the measure's signature
        raise RuntimeError("this measure is broken")  # not one of the errors pymfe itself catches

    monkeypatch.setattr(MFEStatistical, "ft_mean", classmethod(broken))
    X, y = small_dataset()
    mf = extract_metafeatures(X, y, groups=("statistical",), time_budget=None)
    assert "mean" in mf.skipped
    assert not any(name.startswith("mean.") for name in mf.values)
    assert "sd.mean" in mf.values and "cor.mean" in mf.values  # the group's other measures survive


def test_time_budget_runs_groups_in_a_child_and_skips_on_timeout(monkeypatch):
    X, y = small_dataset()
    mf = extract_metafeatures(X, y, groups=("general",), time_budget=20.0)
    assert mf.values["nr_class"] == 3 and not any("*" in s for s in mf.skipped)  # no group lost

    import time

    from pymfe.general import MFEGeneral

    def slow(cls, X):
        time.sleep(30)
        return X.shape[1]

    monkeypatch.setattr(MFEGeneral, "ft_nr_attr", classmethod(slow))  # inherited by the forked child
    start = time.perf_counter()
    mf = extract_metafeatures(X, y, groups=("general",), time_budget=1.0)
    assert time.perf_counter() - start < 10
    assert mf.skipped == ["general:*timeout"] and "nr_attr" not in mf.values


def test_episode_features_separate_easy_from_hard_tasks():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 5)
    centres = rng.normal(size=(5, 16)) * 5.0
    easy = centres[labels] + rng.normal(size=(25, 16)) * 0.1
    hard = centres[labels] * 0.02 + rng.normal(size=(25, 16))
    fe, fh = episode_features(easy, labels), episode_features(hard, labels)
    assert set(fe) == set(EPISODE_FEATURES)
    assert fe["ways"] == 5 and fe["shots"] == 5
    assert fe["fisher_ratio"] > 100 * fh["fisher_ratio"]
    assert fe["loo_proto_acc"] == 1.0 and fh["loo_proto_acc"] < 0.6
    assert fe["nn_margin"] > fh["nn_margin"]
    import torch  # tensors are accepted too

    assert episode_features(torch.tensor(easy), torch.tensor(labels))["ways"] == 5


def test_episode_features_bad_input():
    with pytest.raises(ValueError, match="at least two classes"):
        episode_features(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\[N\*K, D\]"):
        episode_features(np.zeros((3,)), np.zeros(3))


def test_episode_selector_picks_by_task_difficulty():
    from quickstudy.automl.task_select import EpisodeSelector

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 3)
    rows, scores = [], []
    for i in range(40):  # candidate 0 wins on well-separated episodes, candidate 1 on hard ones
        spread = 5.0 if i % 2 == 0 else 0.05
        z = rng.normal(size=(5, 8))[labels] * spread + rng.normal(size=(15, 8))
        rows.append(episode_features(z, labels))
        scores.append([0.9, 0.6] if i % 2 == 0 else [0.3, 0.5])
    selector = EpisodeSelector(k=5).fit(rows, scores)
    easy = episode_features(rng.normal(size=(5, 8))[labels] * 5.0 + rng.normal(size=(15, 8)), labels)
    hard = episode_features(rng.normal(size=(5, 8))[labels] * 0.05 + rng.normal(size=(15, 8)), labels)
    assert selector.choose(easy) == 0 and selector.choose(hard) == 1


def test_embed_support_reads_the_head_input():
    import torch

    from quickstudy.automl.task_select import embed_support
    from quickstudy.models import Conv4

    torch.manual_seed(0)
    with_head = Conv4(in_channels=1, ways=5, hidden=8)
    z = embed_support(with_head, torch.randn(10, 1, 28, 28))
    assert z.shape == (10, with_head.feature_dim)
    backbone = Conv4(in_channels=1, ways=None, hidden=8)
    assert embed_support(backbone, torch.randn(4, 1, 28, 28)).shape == (4, backbone.feature_dim)
