"""Checkpoint files: atomic writes, weights-only loads, clear errors for bad files, RNG round trips."""

import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from quickstudy.training import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from quickstudy.training import checkpoint as checkpoint_module


def test_round_trip_with_weights_only(tmp_path):
    state = {"step": 3, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "history": [{"loss": 0.5, "split": "train"}],
             "best": None, "betas": (0.9, 0.999), "rng": get_rng_state()}
    path = save_checkpoint(tmp_path / "sub" / "last.pt", state)
    assert path == tmp_path / "sub" / "last.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["best"] is None
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["history"] == state["history"]
    # the file loads with plain torch.load in weights-only mode too (no code execution needed)
    torch.load(path, weights_only=True)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left behind


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_truncated_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="last.pt") as info:
        load_checkpoint(path)
    assert "truncated" in str(info.value)


def test_corrupt_empty_and_missing_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt.*empty"):
        load_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(ValueError, match="expected a dict"):
        load_checkpoint(not_a_dict)


def test_checkpoint_that_needs_code_execution_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"obj": Fraction(1, 3)}, path)  # an arbitrary class: unpickling it could run code
    with pytest.raises(ValueError, match="pickled.pt.*weights-only"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    np.random.randn()  # leaves a cached gaussian in the legacy numpy state
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (torch.rand(4), random.random(), np.random.randn(3))
    torch.rand(10), random.random(), np.random.randn(7)  # move every generator on
    set_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(4), random.random(), np.random.randn(3))
    assert torch.equal(expected[0], again[0])
    assert expected[1] == again[1]
    assert np.array_equal(expected[2], again[2])


def test_newer_format_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "future.pt", {"format": "quickstudy.checkpoint", "version": 999})
    with pytest.raises(ValueError, match="version 999"):
        load_checkpoint(path)


def test_unloadable_objects_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\]\['when'\] is a fractions.Fraction"):
        save_checkpoint(tmp_path / "last.pt", {"history": [{"when": Fraction(1, 2)}]})
    assert list(tmp_path.iterdir()) == []
    # a str subclass (torch.__version__ is one) would be refused by weights_only loading as well
    with pytest.raises(TypeError, match="TorchVersion"):
        save_checkpoint(tmp_path / "last.pt", {"torch_version": torch.__version__})
