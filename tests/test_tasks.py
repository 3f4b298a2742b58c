"""Episode sampler and task families: shapes, label invariants, determinism, bad input."""

import math

import pytest
import torch

import quickstudy as qs
from quickstudy.data.base import ArrayDataset, FewShotDataset


def make_dataset(num_classes=12, per_class=20, uneven=False):
    counts = [per_class - (c % 3 if uneven else 0) for c in range(num_classes)]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    # every example is unique and encodes (class, serial) so tests can trace it back
    x = torch.zeros(len(y), 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)
    x[:, 0, 0, 1] = torch.cat([torch.arange(n) for n in counts]).to(torch.uint8)
    return ArrayDataset(x, y)


def example_keys(x):
    raw = (x * 255).round().to(torch.int64)
    return raw[..., 0, 0, 0] * 1000 + raw[..., 0, 0, 1]


@pytest.mark.parametrize("uneven", [False, True])
def test_episode_shapes_and_label_invariants(uneven):
    ds = make_dataset(uneven=uneven)
    sampler = qs.EpisodeSampler(ds, ways=5, shots=2, queries=3, batch_size=8, seed=1)
    batch = sampler[0]
    assert batch.support_x.shape == (8, 10, 1, 4, 4)
    assert batch.query_x.shape == (8, 15, 1, 4, 4)
    assert batch.support_y.shape == (8, 10) and batch.query_y.shape == (8, 15)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert batch.classes.shape == (8, 5) and batch.ways == 5 and batch.shots == 2
    for b in range(8):
        classes = batch.classes[b]
        assert len(set(classes.tolist())) == 5, "classes of an episode must be distinct"
        for x, y, per in ((batch.support_x[b], batch.support_y[b], 2), (batch.query_x[b], batch.query_y[b], 3)):
            assert sorted(y.tolist()) == sorted(list(range(5)) * per)
            true_class = (x[:, 0, 0, 0] * 255).round().long()
            # label n means dataset class classes[n]
            assert torch.equal(true_class, classes[y])
        s_keys = set(example_keys(batch.support_x[b]).tolist())
        q_keys = set(example_keys(batch.query_x[b]).tolist())
        assert len(s_keys) == 10 and len(q_keys) == 15
        assert not s_keys & q_keys, "an example must not be in both support and query"


def test_label_order_is_random_per_episode():
    ds = make_dataset(num_classes=30)
    batch = qs.EpisodeSampler(ds, ways=5, shots=1, queries=1, batch_size=64, seed=0)[0]
    # if labels followed the dataset's class order, classes would be sorted in every row
    sorted_rows = (batch.classes.diff(dim=1) > 0).all(dim=1)
    assert sorted_rows.float().mean() < 0.2


def test_random_access_is_deterministic_in_any_order():
    ds = make_dataset()
    a = qs.EpisodeSampler(ds, ways=3, shots=1, queries=2, batch_size=4, seed=7)
    b = qs.EpisodeSampler(ds, ways=3, shots=1, queries=2, batch_size=4, seed=7)
    first = a[5]
    for i in (9, 0, 3):
        a[i]
    again = a[5]
    fresh = b[5]
    for other in (again, fresh):
        assert torch.equal(first.support_x, other.support_x)
        assert torch.equal(first.query_x, other.query_x)
        assert torch.equal(first.classes, other.classes)
    assert not torch.equal(a[5].classes, a[6].classes)
    c = qs.EpisodeSampler(ds, ways=3, shots=1, queries=2, batch_size=4, seed=8)
    assert not torch.equal(c[5].classes, first.classes)


def test_iteration_matches_indexing_and_length():
    ds = make_dataset()
    sampler = qs.EpisodeSampler(ds, ways=3, shots=1, queries=1, batch_size=2, seed=0, num_batches=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert torch.equal(batches[2].classes, sampler[2].classes)
    assert batches[1].episode_ids.tolist() == [2, 3]
    with pytest.raises(IndexError):
        sampler[3]


def test_fixed_episodes_roundtrip(tmp_path):
    ds = make_dataset()
    sampler = qs.EpisodeSampler(ds, ways=4, shots=2, queries=2, batch_size=3, seed=2)
    fixed = sampler.fixed(5)
    path = tmp_path / "episodes.pt"
    fixed.save(path)
    loaded = qs.FixedEpisodes.load(path, ds)
    assert len(loaded) == 5
    for i in range(5):
        assert torch.equal(loaded[i].support_x, sampler[i].support_x)
        assert torch.equal(loaded[i].query_y, sampler[i].query_y)
    other = make_dataset(num_classes=13)
    with pytest.raises(ValueError, match="different classes"):
        qs.FixedEpisodes.load(path, other)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="episodes.pt"):
        qs.FixedEpisodes.load(path, ds)


def test_variable_ways_and_shots():
    ds = make_dataset(num_classes=12)
    sampler = qs.EpisodeSampler(ds, ways=(2, 6), shots=(1, 4), queries=2, batch_size=3, seed=0)
    seen = set()
    for i in range(40):
        batch = sampler[i]
        assert 2 <= batch.ways <= 6 and 1 <= batch.shots <= 4
        assert batch.support_x.shape[1] == batch.ways * batch.shots
        assert batch.query_x.shape[1] == batch.ways * 2
        seen.add((batch.ways, batch.shots))
    assert len(seen) > 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ways=13), r"ways=13 is larger than the 12 classes"),
        (dict(shots=15, queries=6), r"shots \+ queries = 15 \+ 6 = 21 is larger than the 20 examples"),
        (dict(ways=0), r"ways must be a positive integer, got 0"),
        (dict(ways=2.5), r"ways must be a positive integer, got 2.5"),
        (dict(shots=-1), r"shots must be a positive integer, got -1"),
        (dict(queries="3"), r"queries must be a positive integer, got '3'"),
        (dict(batch_size=0), r"batch_size must be a positive integer"),
        (dict(ways=(5, 3)), r"low <= high"),
    ],
)
def test_bad_sampler_arguments(kwargs, match):
    args = dict(ways=5, shots=1, queries=5, batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        qs.EpisodeSampler(make_dataset(), **args)


def test_bad_dataset_inputs():
    with pytest.raises(ValueError, match="no classes"):
        FewShotDataset(torch.zeros(0, 1), torch.zeros(1, dtype=torch.int64), [])
    with pytest.raises(ValueError, match="one label per row"):
        ArrayDataset(torch.zeros(5, 2), torch.zeros(4))


def test_taskbatch_validates_shapes():
    x = torch.zeros(2, 5, 3)
    y = torch.zeros(2, 5, dtype=torch.int64)
    qs.TaskBatch(support_x=x, support_y=y, query_x=x, query_y=y, ways=5)
    with pytest.raises(ValueError, match="support_y has 4 examples"):
        qs.TaskBatch(support_x=x, support_y=y[:, :4], query_x=x, query_y=y)
    with pytest.raises(ValueError, match="same B"):
        qs.TaskBatch(support_x=x, support_y=y, query_x=x[:1], query_y=y[:1])
    with pytest.raises(ValueError, match="must match"):
        qs.TaskBatch(support_x=x, support_y=y, query_x=torch.zeros(2, 5, 4), query_y=y)
    with pytest.raises(ValueError, match=r"expected 0..1 for ways=2"):
        qs.TaskBatch(support_x=x, support_y=y + 3, query_x=x, query_y=y, ways=2)
    with pytest.raises(TypeError, match="support_x must be a torch.Tensor"):
        qs.TaskBatch(support_x=[1], support_y=y, query_x=x, query_y=y)


def test_taskbatch_iterates_and_moves():
    batch = qs.Sinusoid(shots=4, queries=6, batch_size=3, seed=0)[0]
    tasks = list(batch)
    assert len(tasks) == 3 and tasks[1].support_x.shape == (4, 1)
    assert torch.equal(batch.to("cpu").query_y, batch.query_y)
    assert batch.slice(1, 3).batch_size == 2
    assert batch.inputs_to(torch.float64).support_y.dtype == torch.float64


def test_sinusoid_matches_finn_et_al():
    family = qs.Sinusoid(shots=10, queries=10, batch_size=200, seed=0)
    batch = family[3]
    assert batch.support_x.shape == (200, 10, 1) and batch.query_y.shape == (200, 10, 1)
    assert not batch.is_classification and batch.ways is None
    amplitude, phase = family.parameters_of(3)
    assert 0.1 <= float(amplitude.min()) and float(amplitude.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    x = torch.cat([batch.support_x, batch.query_x], dim=1).double()
    y = torch.cat([batch.support_y, batch.query_y], dim=1).double()
    assert float(x.min()) >= -5.0 and float(x.max()) <= 5.0
    expected = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.equal(family[3].support_y, batch.support_y)
    assert not torch.equal(family[4].support_y, batch.support_y)
