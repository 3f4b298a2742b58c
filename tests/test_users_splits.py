"""User splits: disjoint, seeded, and the time split holds only what was known at the cut-off."""

import numpy as np
import pytest
from _users_toy import DAY, START, write_toy

from quickstudy.data.ratings import read_ratings
from quickstudy.users.splits import parse_cutoff, random_split, time_split


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    path, _ = write_toy(tmp_path_factory.mktemp("toy"))
    return read_ratings(path)


def users_of(ratings, rows):
    return set(ratings.user[rows].tolist())


@pytest.mark.parametrize("make", [
    lambda r: random_split(r, min_ratings=12, val_fraction=0.2, test_fraction=0.3, seed=3),
    lambda r: time_split(r, cutoff=START + 30 * DAY, min_ratings=12, val_fraction=0.2),
])
def test_no_user_in_two_parts(ratings, make):
    split = make(ratings)
    train, val, test = (users_of(ratings, split.rows(p)) for p in ("train", "val", "test"))
    assert train and val and test
    assert not train & val and not train & test and not val & test
    assert set(split.val_users.tolist()) == val and set(split.test_users.tolist()) == test
    counts = dict(zip(*np.unique(ratings.user, return_counts=True)))
    assert all(counts[u] >= 12 for u in val | test)


def test_random_split_is_seeded(ratings):
    a = random_split(ratings, min_ratings=12, seed=0)
    b = random_split(ratings, min_ratings=12, seed=0)
    c = random_split(ratings, min_ratings=12, seed=1)
    assert a.test_users.tolist() == b.test_users.tolist() and np.array_equal(a.train_rows, b.train_rows)
    assert a.test_users.tolist() != c.test_users.tolist()


def test_random_split_keeps_every_rating_of_the_training_users(ratings):
    split = random_split(ratings, min_ratings=12, seed=0)
    assert len(split.train_rows) + len(split.val_rows) + len(split.test_rows) == len(ratings)


def test_time_split_test_users_arrive_after_the_cutoff_and_training_is_before_it(ratings):
    cutoff = START + 30 * DAY
    split = time_split(ratings, cutoff=cutoff, min_ratings=12, val_fraction=0.2)
    first = {u: ratings.timestamp[ratings.user == u].min() for u in np.unique(ratings.user)}
    assert all(first[u] >= cutoff for u in split.test_users)
    assert all(first[u] < cutoff for u in users_of(ratings, split.train_rows) | set(split.val_users))
    assert (ratings.timestamp[split.train_rows] < cutoff).all() and (ratings.timestamp[split.val_rows] < cutoff).all()
    # every user arriving after the cut-off with enough ratings is a test user
    late = [u for u, t in first.items() if t >= cutoff and (ratings.user == u).sum() >= 12]
    assert sorted(late) == sorted(split.test_users.tolist())
    # the validation users are the latest arrivals before the cut-off
    assert min(first[u] for u in split.val_users) >= max(first[u] for u in users_of(ratings, split.train_rows)
                                                        if (ratings.user[split.train_rows] == u).sum() >= 12)


def test_time_split_needs_timestamps_and_late_users(tmp_path, ratings):
    path = tmp_path / "r.csv"
    path.write_text("a,1,5\na,2,6\n")
    with pytest.raises(ValueError, match="time_split needs timestamps"):
        time_split(read_ratings(path), cutoff="2013-05-01")
    with pytest.raises(ValueError, match="choose an earlier split.cutoff"):
        time_split(ratings, cutoff="2030-01-01", min_ratings=12)


def test_cutoff_from_a_date():
    assert parse_cutoff("2013-05-01") == 1367366400
    assert parse_cutoff(1367366400) == 1367366400
    with pytest.raises(ValueError, match="ISO date"):
        parse_cutoff("May 1st")
