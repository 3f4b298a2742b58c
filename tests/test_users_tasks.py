"""Users as tasks: seeded TaskBatches made of real ratings only, the leave-user-out item statistics of training
tasks, the evaluation episodes, and MeLU adapting only its decision layers."""

import numpy as np
import pytest
import torch
from _users_toy import write_toy

import quickstudy as qs
from quickstudy.data.ratings import read_items, read_ratings
from quickstudy.models import MeLU
from quickstudy.users.dataset import UsersData
from quickstudy.users.splits import random_split
from quickstudy.users.tasks import UserEpisodes, UserTasks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ratings_path, items_path = write_toy(tmp_path_factory.mktemp("toy"))
    ratings = read_ratings(ratings_path)
    return UsersData(ratings, read_items(items_path), random_split(ratings, min_ratings=12, seed=0))


def pairs_of(grouped, position):
    items, ratings, _ = grouped.of(int(position))
    return set(zip(items.tolist(), ratings.tolist()))


def item_of(encoder, x):
    """Catalogue rows back from x rows: the genres + year columns identify a toy item."""
    return x[..., 1 + encoder.genres]  # year column: (1950 + 2i - 2000) / 20


def test_training_batches_are_seeded_and_hold_only_real_ratings(data):
    grouped = data.grouped("train")
    tasks = UserTasks(grouped, data.encoder, shots=(3, 5), queries=6, batch_size=4, seed=7)
    again = UserTasks(grouped, data.encoder, shots=(3, 5), queries=6, batch_size=4, seed=7)
    other = UserTasks(grouped, data.encoder, shots=(3, 5), queries=6, batch_size=4, seed=8)
    shots = set()
    for i in range(8):
        batch = tasks[i]
        assert torch.equal(batch.query_x, again[i].query_x) and torch.equal(batch.support_y, again[i].support_y)
        k = batch.support_x.shape[1]
        shots.add(k)
        assert 3 <= k <= 5 and batch.query_x.shape[:2] == (4, 6) and batch.support_x.shape[-1] == data.encoder.width
        for b, position in enumerate(batch.episode_ids.tolist()):
            real = pairs_of(grouped, position)
            years = item_of(data.encoder, torch.cat([batch.support_x[b], batch.query_x[b]]))
            items = torch.round((years * 20 + 50) / 2).long().tolist()
            values = torch.cat([batch.support_y[b], batch.query_y[b]])[:, 0].tolist()
            assert set(zip(items, values)) <= real  # every row, support or query, is one of the user's ratings
            assert not set(zip(items[:k], values[:k])) & set(zip(items[k:], values[k:]))  # support apart from query
    assert shots == {3, 4, 5}
    assert not torch.equal(tasks[0].query_y, other[0].query_y)


def test_training_tasks_take_their_users_ratings_out_of_the_item_statistics(data):
    encoder = data.encoder
    items, ratings = torch.tensor([[2, 5]]), torch.tensor([[9.0, 4.0]])
    plain, _ = encoder.task(items, ratings, items)
    left_out, _ = encoder.task(items, ratings, items, ratings, leave_user_out=True)
    bias_column = 1 + encoder.genres + 1
    count, total, mu = data.stats.count, data.stats.total, data.stats.global_mean
    for j, (item, rating) in enumerate(zip(items[0].tolist(), ratings[0].tolist())):
        assert plain[0, j, bias_column] == pytest.approx((total[item] - count[item] * mu) / (count[item] + 5.0), abs=1e-5)
        expected = (total[item] - rating - (count[item] - 1) * mu) / (count[item] - 1 + 5.0)
        assert left_out[0, j, bias_column] == pytest.approx(expected, abs=1e-5)
    # the training tasks are built that way: every row's item bias leaves its own rating out
    batch = UserTasks(data.grouped("train"), encoder, shots=3, queries=4, batch_size=6, seed=0)[0]
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)[..., 0].double()
    items = torch.round((item_of(encoder, x) * 20 + 50) / 2).long()
    n, t = torch.as_tensor(count)[items] - 1.0, torch.as_tensor(total)[items] - y
    assert torch.allclose(x[..., bias_column].double(), (t - n * mu) / (n + 5.0), atol=1e-5)


def test_episodes_fixed_nested_and_first_by_time(data):
    grouped = data.grouped("test")
    five = UserEpisodes(grouped, data.encoder, shots=5)
    ten = UserEpisodes(grouped, data.encoder, shots=10)
    for j in range(len(ten)):
        a, b = five.episode(j), ten.episode(j)
        assert a.user == b.user and set(a.support_items) < set(b.support_items)
        assert len(b.support_items) + len(b.query_items) == len(grouped.of(int(ten.positions[j]))[0])
        batch = ten[j]
        assert batch.batch_size == 1 and batch.query_y.shape[1] == len(b.query_items)  # no filler rows
        assert torch.equal(batch.query_x, ten[j].query_x)
    first = UserEpisodes(grouped, data.encoder, shots=4, support="first")
    items, _, times = grouped.of(int(first.positions[0]))
    assert first.episode(0).support_items.tolist() == items[np.argsort(times, kind="stable")[:4]].tolist()


def test_melu_adapts_only_its_decision_layers_under_anil(data):
    torch.manual_seed(0)
    model = MeLU(**data.encoder.model_shape(), embedding_dim=4, hidden=[8], offset=7.0)
    x = UserEpisodes(data.grouped("test"), data.encoder, shots=5)[0]
    assert model(x.query_x[0]).shape == (x.query_x.shape[1], 1)
    assert torch.allclose(model.decision[-1].bias, torch.tensor([7.0]))
    melu = qs.ANIL(model, head="decision", inner_lr=0.1, inner_steps=2, loss="mse")
    assert set(melu.head_params) == {n for n, _ in model.named_parameters() if n.startswith("decision.")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        plain = model(x.query_x[0])
    assert torch.equal(melu.adapt(x.support_x[0], x.support_y[0], steps=0)(x.query_x[0]), plain)
    assert not torch.allclose(melu.adapt(x.support_x[0], x.support_y[0])(x.query_x[0]), plain)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # adapting leaves theta alone
    loss, _ = melu.meta_loss(x)  # the global update reaches the embeddings through the query loss
    loss.backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0 and model.genre_embedding.weight.grad.abs().sum() > 0


def test_melu_rejects_rows_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"MeLU expects \[n, 12\] rows"):
        MeLU(items=3, genres=4, profile=4)(torch.zeros(2, 11))
