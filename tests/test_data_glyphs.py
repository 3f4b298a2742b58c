"""Glyphs: the embedded data set rendered from matplotlib's fonts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from quickstudy.data import FewShotDataset, Glyphs, glyph_blocks
from quickstudy.data import glyphs as gl
from quickstudy.data import paths

MIN_CLASSES = 1500


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("qs_glyph_cache")
    patch.setenv(paths.ENV_CACHE, str(cache))
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def everything(cache_env):
    start = time.perf_counter()
    dataset = Glyphs("all")
    print(f"\nfirst Glyphs render: {time.perf_counter() - start:.1f} s")
    return dataset


@pytest.fixture(scope="module")
def splits(everything):
    return {split: Glyphs(split) for split in ("train", "val", "test", "trainval")}


def _digest(ds: FewShotDataset) -> str:
    h = hashlib.sha256(ds.examples.numpy().tobytes())
    h.update("\n".join(ds.classes).encode())
    return h.hexdigest()


def test_shapes_and_convention(everything):
    ds = everything
    assert isinstance(ds, FewShotDataset)
    assert len(ds) >= MIN_CLASSES
    assert ds.examples.shape == (len(ds) * 20, 1, 28, 28)
    assert ds.examples.dtype == torch.uint8
    assert torch.equal(ds.counts, torch.full((len(ds),), 20))
    assert int(ds.examples.max()) == 255
    assert float(ds.examples.float().mean()) < 60            # bright strokes on black
    assert float(ds.examples.median()) == 0
    ink = ds.examples.flatten(1).sum(1)
    assert bool((ink > 0).all()), "an example has no ink"
    # the examples of a class are distinct drawings (fonts and distortions differ)
    for c in range(0, len(ds), 97):
        block = ds.examples_of(c).flatten(1)
        assert torch.unique(block, dim=0).shape[0] == block.shape[0]


def test_class_names(everything):
    ds = everything
    assert len(set(ds.classes)) == len(ds)
    for name, block, code in zip(ds.classes, ds.blocks, ds.codepoints):
        assert name == f"{block}/U+{code:04X}"
    assert ds.characters[ds.codepoints.index(ord("A"))] == "A"


def test_visual_duplicates_are_removed(everything):
    codes = set(everything.codepoints)
    assert ord("A") in codes and ord("a") in codes
    assert 0x0391 not in codes     # GREEK CAPITAL LETTER ALPHA looks like A
    assert 0x0410 not in codes     # CYRILLIC CAPITAL LETTER A
    assert 0x00E9 not in codes     # e with acute: a decomposable variant of e


def test_splits_by_block(everything, splits):
    train, val, test, trainval = (splits[s] for s in ("train", "val", "test", "trainval"))
    names = [set(ds.classes) for ds in (train, val, test)]
    blocks = [set(ds.blocks) for ds in (train, val, test)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not names[i] & names[j]
            assert not blocks[i] & blocks[j], "a block is in two splits"
    assert names[0] | names[1] | names[2] == set(everything.classes)
    assert trainval.classes == [c for c in everything.classes if c in names[0] | names[1]]
    total = len(everything)
    fractions = [len(ds) / total for ds in (train, val, test)]
    assert 0.55 < fractions[0] < 0.72 and 0.10 < fractions[1] < 0.22 and 0.15 < fractions[2] < 0.25
    assert len(train) >= 1000
    # the split's examples are the same tensors as in "all"
    index = everything.classes.index(test.classes[5])
    assert torch.equal(test.examples_of(5), everything.examples_of(index))
    table = glyph_blocks()
    assert sum(entry["classes"] for entry in table.values()) == total
    for block in blocks[2]:
        assert table[block]["split"] == "test"


def test_cached_load_is_fast_and_does_not_render(everything, monkeypatch):
    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cache should have been used")

    monkeypatch.setattr(gl, "_render_class", no_render)
    start, start_cpu = time.perf_counter(), time.process_time()
    again = Glyphs("all")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert torch.equal(again.examples, everything.examples)
    # CPU time, so that other jobs on a shared machine do not make the check flaky
    assert cpu < 2.0, f"cached load took {cpu:.2f} s of CPU ({elapsed:.2f} s wall)"


def test_cache_holds_what_rendering_gives(everything):
    """Re-render a few classes from scratch and compare with the cached tensors."""
    renderer = gl._Renderer(28)
    classes = gl._classes()
    for c in (0, 123, len(classes) - 1):
        _, code, fonts = classes[c]
        fresh = gl._render_class(renderer, code, fonts, 20, 0)
        assert np.array_equal(fresh, everything.examples_of(c)[:, 0].numpy())


def test_seeds(cache_env, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "a"))
    first = Glyphs("val", seed=0, examples_per_class=2)
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "b"))       # render again, no cache
    second = Glyphs("val", seed=0, examples_per_class=2)
    other = Glyphs("val", seed=1, examples_per_class=2)
    assert torch.equal(first.examples, second.examples) and first.classes == second.classes
    assert other.classes == first.classes                         # the classes do not depend on the seed
    assert not torch.equal(first.examples, other.examples)
    assert first.examples.shape == (len(first) * 2, 1, 28, 28)


def test_identical_in_a_fresh_process(tmp_path, monkeypatch):
    """No dependence on hash randomisation or dict/set order: a subprocess with another hash seed
    and an empty cache renders the same bytes."""
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "here"))
    here = _digest(Glyphs("test", seed=3, examples_per_class=2))
    src = Path(gl.__file__).resolve().parents[2]
    code = ("import hashlib; from quickstudy.data import Glyphs\n"
            "ds = Glyphs('test', seed=3, examples_per_class=2)\n"
            "h = hashlib.sha256(ds.examples.numpy().tobytes()); h.update('\\n'.join(ds.classes).encode())\n"
            "print(h.hexdigest())\n")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env[paths.ENV_CACHE] = str(tmp_path / "there")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == here


def test_other_image_size(cache_env, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path))
    ds = Glyphs("val", image_size=32, examples_per_class=1)
    assert ds.examples.shape == (len(ds), 1, 32, 32)
    assert ds.classes == Glyphs("val", examples_per_class=1).classes


@pytest.mark.parametrize("kwargs,words", [
    ({"split": "validation"}, ["split", "'validation'", "train", "val", "test"]),
    ({"seed": -1}, ["seed", "-1"]),
    ({"seed": 1.5}, ["seed", "1.5"]),
    ({"image_size": 4}, ["image_size", "4"]),
    ({"image_size": True}, ["image_size", "True"]),
    ({"examples_per_class": 0}, ["examples_per_class", "0"]),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        Glyphs(**kwargs)
    for word in words:
        assert word in str(info.value)
