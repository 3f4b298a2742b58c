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


# --------------------------------------------------------------------------- content checksums
def flip_a_bit_of(path, tensor: torch.Tensor) -> None:
    """Flip one bit inside ``tensor``'s stored bytes in the checkpoint file (the file stays loadable)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.numpy().tobytes()[-64:])
    assert at > 0, "the tensor's bytes are stored as they are"
    data[at + 5] ^= 0x08
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_weight_is_refused_naming_the_file(tmp_path):
    weight = torch.linspace(-1, 1, 4096)
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1, "model": {"w": weight}})
    flip_a_bit_of(path, weight)
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], weight)  # torch alone sees nothing
    with pytest.raises(ValueError, match=r"last\.pt.*checksum"):
        load_checkpoint(path)


def test_a_value_altered_through_torch_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", {"step": 1, "model": {"w": torch.ones(3)}})
    state = torch.load(path, weights_only=True)
    state["step"] = 999
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"best\.pt.*altered"):
        load_checkpoint(path)


def test_the_checksum_is_checked_then_dropped(tmp_path):
    state = {"step": 1, "model": {"w": torch.ones(3, dtype=torch.bfloat16)}, "size": torch.Size([2]), "x": 1.5e-300}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", state))
    assert set(loaded) == set(state)


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "old.pt"  # written before checkpoints carried a checksum
    torch.save({"format": "quickstudy.checkpoint", "version": 1, "step": 2, "model": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path)["step"] == 2


def test_the_previous_checkpoint_is_kept_and_offered(tmp_path):
    weight = torch.linspace(-1, 1, 4096)
    save_checkpoint(tmp_path / "best.pt", {"step": 1, "model": {"w": weight}})
    save_checkpoint(tmp_path / "last.pt", {"step": 1, "model": {"w": weight}}, keep_previous=True)
    save_checkpoint(tmp_path / "last.pt", {"step": 2, "model": {"w": weight + 1}}, keep_previous=True)
    assert load_checkpoint(tmp_path / "last.prev.pt")["step"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    flip_a_bit_of(tmp_path / "last.pt", weight + 1)
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "last.pt")
    message = str(info.value)
    assert "best.pt (step 1)" in message and "last.prev.pt (step 1)" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]


def test_a_trainer_refuses_to_resume_from_a_damaged_checkpoint(tmp_path):
    from quickstudy import Trainer
    from quickstudy.algorithms import ProtoNet
    from quickstudy.models import MLP
    from _toy import class_batch

    def learner():
        torch.manual_seed(0)
        return ProtoNet(MLP(in_features=2, out_features=4, hidden=[8]).double())

    tasks = [class_batch(seed=i) for i in range(4)]
    Trainer(learner(), tasks, steps=4, out=tmp_path, checkpoint_every=2, progress=False, val_every=None).fit()
    assert load_checkpoint(tmp_path / "last.prev.pt")["step"] == 2
    weight = load_checkpoint(tmp_path / "last.pt")["model"]["model.head.weight"]
    flip_a_bit_of(tmp_path / "last.pt", weight)
    with pytest.raises(ValueError, match=r"last\.pt.*last\.prev\.pt \(step 2\)"):
        Trainer.resume(tmp_path, learner(), tasks)
