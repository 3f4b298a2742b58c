"""No validation or test rating (nor, in the time split, any rating after the cut-off) reaches anything training
builds: item statistics, the network's inputs, the baselines, the training tasks, the trained weights. Each test
changes exactly those ratings and checks that nothing training-side moves."""

import dataclasses

import numpy as np
import pytest
import torch
from _users_toy import DAY, START, toy_config, write_toy

from quickstudy.data.ratings import read_items, read_ratings
from quickstudy.training import load_checkpoint
from quickstudy.runs import train_run
from quickstudy.users import kind
from quickstudy.users.baselines import ItemKNN, ItemMean, MatrixFactorization
from quickstudy.users.dataset import UsersData
from quickstudy.users.splits import random_split, time_split
from quickstudy.users.tasks import UserEpisodes, UserTasks

CUTOFF = START + 30 * DAY


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("toy"))


def splits(ratings):
    return {"random": random_split(ratings, min_ratings=12, val_fraction=0.2, test_fraction=0.3, seed=0),
            "time": time_split(ratings, cutoff=CUTOFF, min_ratings=12, val_fraction=0.2)}


def hidden_rows(ratings, split):
    """Every rating training must not see: the held-out users' and, in the time split, those after the cut-off."""
    hidden = np.ones(len(ratings), dtype=bool)
    hidden[split.train_rows] = False
    return hidden


def perturbed(ratings, hidden):
    values = ratings.rating.copy()
    values[hidden] = (values[hidden] + 4) % 11  # still on the 0..10 scale
    return dataclasses.replace(ratings, rating=values)


@pytest.mark.parametrize("kind_", ["random", "time"])
def test_statistics_baselines_and_training_tasks_ignore_hidden_ratings(files, kind_):
    ratings, items = read_ratings(files[0]), read_items(files[1])
    split = splits(ratings)[kind_]
    hidden = hidden_rows(ratings, split)
    assert hidden.any() and (split.kind != "time" or (ratings.timestamp[hidden] >= CUTOFF).any())
    a, b = UsersData(ratings, items, split), UsersData(perturbed(ratings, hidden), items, split)
    assert np.array_equal(a.stats.count, b.stats.count) and np.array_equal(a.stats.total, b.stats.total)
    assert a.stats.global_mean == b.stats.global_mean
    for baseline in (ItemMean(), MatrixFactorization(factors=2, iterations=3), ItemKNN()):
        fitted_a, fitted_b = type(baseline)(**_args(baseline)).fit(a.training()), baseline.fit(b.training())
        for name, value in vars(fitted_a).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, vars(fitted_b)[name]), (type(baseline).__name__, name)
    tasks_a = UserTasks(a.grouped("train"), a.encoder, shots=(3, 5), queries=4, batch_size=4, seed=0)
    tasks_b = UserTasks(b.grouped("train"), b.encoder, shots=(3, 5), queries=4, batch_size=4, seed=0)
    for i in range(5):
        for field in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(tasks_a[i], field), getattr(tasks_b[i], field))


def _args(baseline):
    return {"factors": 2, "iterations": 3} if isinstance(baseline, MatrixFactorization) else {}


def test_a_test_users_query_ratings_reach_only_its_targets(files):
    ratings, items = read_ratings(files[0]), read_items(files[1])
    split = splits(ratings)["random"]
    data = UsersData(ratings, items, split)
    episodes = UserEpisodes(data.grouped("test"), data.encoder, shots=4)
    e = episodes.episode(0)
    query = np.isin(ratings.user, [e.user]) & np.isin(ratings.item, items.ids[e.query_items])
    other = UserEpisodes(UsersData(perturbed(ratings, query), items, split).grouped("test"), data.encoder, shots=4)
    before, after = episodes[0], other[0]
    assert torch.equal(before.support_x, after.support_x) and torch.equal(before.query_x, after.query_x)
    assert not torch.equal(before.query_y, after.query_y)


@pytest.mark.parametrize("kind_", ["random", "time"])
def test_trained_weights_do_not_depend_on_hidden_ratings(files, tmp_path, kind_):
    ratings = read_ratings(files[0])
    split_section = {"kind": kind_, "cutoff": CUTOFF} if kind_ == "time" else {"kind": kind_}
    config = toy_config(*files, split=split_section)
    loaded, _ = kind.load_config(raw=config)
    from quickstudy.users.build import make_split

    hidden = hidden_rows(ratings, make_split(loaded, ratings))
    lines = files[0].read_text().splitlines()
    changed = perturbed(ratings, hidden)
    for row in np.flatnonzero(hidden):
        fields = lines[ratings.line[row] - 1].split(",")
        fields[2] = str(int(changed.rating[row]))
        lines[ratings.line[row] - 1] = ",".join(fields)
    other = tmp_path / "changed.csv"
    other.write_text("\n".join(lines) + "\n")
    runs = [train_run(None, raw=config, out=tmp_path / "a", progress=False),
            train_run(None, raw={**config, "data": {**config["data"], "ratings": str(other)}}, out=tmp_path / "b",
                           progress=False)]
    weights = [load_checkpoint(run / "last.pt")["model"] for run in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
