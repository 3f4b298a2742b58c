"""Omniglot: the real archives (from ../shared/data when present, skipped otherwise), the Vinyals and
Lake splits, rotation, the cache, the lookup order, downloads and every error path."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quickstudy.data import FewShotDataset, Omniglot, find_omniglot, vinyals_classes
from quickstudy.data import omniglot as om
from quickstudy.data import paths

SPLIT_DIR = Path(om.__file__).parent / "splits" / "vinyals"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


# ----------------------------------------------------------------------------------------- helpers


def _png(seed: int, size: int = 105) -> bytes:
    """A 1-bit white image with a black bar whose position depends on ``seed``."""
    image = Image.new("1", (size, size), 1)
    pixels = np.ones((size, size), dtype=bool)
    row = 10 + (seed * 7) % (size - 30)
    pixels[row:row + 8, 5:size - 5] = False
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_archive(path: Path, characters: dict[str, int], top: str = "images_background",
                 corrupt_member: str | None = None) -> Path:
    """A small Omniglot-layout zip: ``{"Alphabet/characterNN": drawings}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", b"")
        number = 0
        for key, drawings in characters.items():
            number += 1
            for d in range(1, drawings + 1):
                member = f"{top}/{key}/{number:04d}_{d:02d}.png"
                data = b"this is not a png" if member == corrupt_member else _png(number * 31 + d)
                archive.writestr(member, data)
    return path


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """A private cache directory for this module (so the full decode happens once per run)."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("qs_cache")
    patch.setenv(paths.ENV_CACHE, str(cache))
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def archives(cache_env):
    """The two real archives, found without downloading, or skip."""
    found = {}
    for name in ARCHIVES:
        try:
            found[name] = find_omniglot(name, download=False)
        except FileNotFoundError:
            pytest.skip(f"Omniglot archive {name} not available locally (set QUICKSTUDY_DATA or put it in "
                        f"../shared/data/omniglot); the real-data tests need it and must not download")
    return found


@pytest.fixture(scope="module")
def omniglot_all(archives):
    start = time.perf_counter()
    dataset = Omniglot("all", download=False)
    print(f"\nfirst Omniglot decode: {time.perf_counter() - start:.1f} s")
    return dataset


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """No real data anywhere: no env var, no shared folder, an empty cache."""
    monkeypatch.delenv(paths.ENV_DATA, raising=False)
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "shared_data_dirs", lambda: [])
    return tmp_path


# ----------------------------------------------------------------------------------------- real data


def test_archive_listing_counts(archives):
    """Counts straight from the zip listings: 964 + 659 characters, 20 drawings each, 50 alphabets."""
    total_alphabets = set()
    expected = {"images_background.zip": (964, 30), "images_evaluation.zip": (659, 20)}
    for name, path in archives.items():
        with zipfile.ZipFile(path) as archive:
            characters = om._list_characters(path, archive)
        assert len(characters) == expected[name][0]
        assert all(len(members) == 20 for members in characters.values())
        alphabets = {key.split("/")[0] for key in characters}
        assert len(alphabets) == expected[name][1]
        total_alphabets |= alphabets
    assert len(total_alphabets) == 50


def test_all_characters(omniglot_all):
    ds = omniglot_all
    assert isinstance(ds, FewShotDataset)
    assert len(ds) == 1623
    assert ds.examples.shape == (1623 * 20, 1, 28, 28)
    assert ds.examples.dtype == torch.uint8
    assert torch.equal(ds.counts, torch.full((1623,), 20))
    assert len(set(ds.classes)) == 1623
    assert all(len(name.split("/")) == 2 and name.split("/")[1].startswith("character") for name in ds.classes)
    # strokes bright on a dark background
    assert ds.examples.float().mean() < 50
    assert int(ds.examples.max()) == 255
    assert float(ds.examples.median()) == 0
    per_image_ink = ds.examples.flatten(1).float().sum(1)
    assert bool((per_image_ink > 0).all())


def test_decoding_matches_the_png(omniglot_all, archives):
    """One drawing decoded by hand: Lanczos resize of the inverted 105x105 PNG."""
    path = archives["images_background.zip"]
    with zipfile.ZipFile(path) as archive:
        characters = om._list_characters(path, archive)
        key = next(iter(characters))
        with Image.open(io.BytesIO(archive.read(characters[key][3]))) as image:
            expected = 255 - np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    index = omniglot_all.classes.index(key)
    assert np.array_equal(omniglot_all.examples_of(index)[3, 0].numpy(), expected)


@pytest.mark.parametrize("split,count", [("train", 4112), ("val", 688), ("test", 1692), ("trainval", 4800)])
def test_vinyals_splits(omniglot_all, split, count):
    ds = Omniglot(split, download=False)
    lines = (SPLIT_DIR / f"{split}.txt").read_text().split()
    assert len(ds) == count == len(lines)
    assert ds.classes == lines
    assert ds.examples.shape == (count * 20, 1, 28, 28) and ds.examples.dtype == torch.uint8
    assert ds.min_examples_per_class == 20


def test_vinyals_split_files_are_the_published_ones():
    """The shipped files match the copy in shared/data (when present) and are consistent."""
    train, val, test, trainval = (vinyals_classes(s) for s in ("train", "val", "test", "trainval"))
    assert (len(train), len(val), len(test), len(trainval)) == (4112, 688, 1692, 4800)
    characters = [{c.rsplit("/", 1)[0] for c in split} for split in (train, val, test)]
    assert [len(c) for c in characters] == [1028, 172, 423]
    assert not (characters[0] & characters[1]) and not (characters[0] & characters[2]) \
        and not (characters[1] & characters[2])
    assert set(trainval) == set(train) | set(val)
    for shared in paths.shared_data_dirs():
        original = shared / "omniglot" / "splits" / "vinyals"
        if original.is_dir():
            for name in ("train", "val", "test", "trainval"):
                assert (SPLIT_DIR / f"{name}.txt").read_bytes() == (original / f"{name}.txt").read_bytes()


def test_rotation(omniglot_all):
    ds = Omniglot("train", download=False)
    base = ds.classes[0].rsplit("/", 1)[0]
    index = {name: i for i, name in enumerate(ds.classes)}
    upright = ds.examples_of(index[f"{base}/rot000"])
    # rot000 is the character itself
    assert torch.equal(upright, omniglot_all.examples_of(omniglot_all.classes.index(base)))
    for angle in (90, 180, 270):
        rotated = ds.examples_of(index[f"{base}/rot{angle:03d}"])
        assert torch.equal(rotated, torch.rot90(upright, k=angle // 90, dims=(-2, -1)))
    # counter-clockwise, like PIL's Image.rotate
    pil = np.asarray(Image.fromarray(upright[0, 0].numpy()).rotate(90))
    assert np.array_equal(ds.examples_of(index[f"{base}/rot090"])[0, 0].numpy(), pil)
    assert not torch.equal(upright, ds.examples_of(index[f"{base}/rot090"]))


def test_lake_protocol(omniglot_all):
    background = Omniglot("background", protocol="lake", download=False)
    evaluation = Omniglot("evaluation", protocol="lake", download=False)
    assert (len(background), len(evaluation)) == (964, 659)
    assert background.classes + evaluation.classes == omniglot_all.classes
    assert torch.equal(torch.cat([background.examples, evaluation.examples]), omniglot_all.examples)
    assert Omniglot("train", protocol="lake", download=False).classes == background.classes
    assert Omniglot("test", protocol="lake", download=False).classes == evaluation.classes
    assert len(Omniglot("all", protocol="lake", download=False)) == 1623
    alphabets = lambda ds: {c.split("/")[0] for c in ds.classes}  # noqa: E731
    assert not alphabets(background) & alphabets(evaluation)


def test_second_load_comes_from_the_cache(omniglot_all, cache_env, monkeypatch):
    cached = sorted((cache_env / "omniglot").glob("*.npz"))
    assert [p.name.split("-")[0] for p in cached] == ["images_background", "images_evaluation"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a PNG although the cache should have been used")

    monkeypatch.setattr(om, "_decode_png", no_decoding)
    start = time.perf_counter()
    again = Omniglot("all", download=False)
    assert time.perf_counter() - start < 10
    assert torch.equal(again.examples, omniglot_all.examples)


# ------------------------------------------------------------------------------ synthetic archives


def test_cache_key_includes_size_mtime_and_image_size(isolated, monkeypatch):
    archive = make_archive(isolated / "fake.zip", {"Alpha/character01": 20, "Alpha/character02": 20})
    images, names = om.load_archive(archive, image_size=28)
    assert images.shape == (2, 20, 28, 28) and names == ["Alpha/character01", "Alpha/character02"]
    small, _ = om.load_archive(archive, image_size=14)
    assert small.shape == (2, 20, 14, 14)
    assert len(list((isolated / "cache" / "omniglot").glob("fake-*.npz"))) == 2

    def no_decoding(*args, **kwargs):
        raise RuntimeError("decoder called")

    monkeypatch.setattr(om, "_decode_png", no_decoding)
    again, _ = om.load_archive(archive, image_size=28)          # from the cache
    assert np.array_equal(again, images)
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="decoder called"):     # new mtime: decoded again
        om.load_archive(archive, image_size=28)


def test_damaged_cache_is_rebuilt(isolated):
    archive = make_archive(isolated / "fake.zip", {"Alpha/character01": 20})
    images, _ = om.load_archive(archive, image_size=28)
    (cache_file,) = (isolated / "cache" / "omniglot").glob("fake-*.npz")
    cache_file.write_bytes(b"garbage")
    again, _ = om.load_archive(archive, image_size=28)
    assert np.array_equal(again, images)


def test_decoded_pixels_full_size(isolated):
    archive = make_archive(isolated / "fake.zip", {"Alpha/character01": 20})
    images, _ = om.decode_archive(archive, image_size=105, progress=False)
    with zipfile.ZipFile(archive) as z:
        first = sorted(n for n in z.namelist() if n.endswith(".png"))[0]
        with Image.open(io.BytesIO(z.read(first))) as png:
            ink = ~np.asarray(png, dtype=bool)
    assert np.array_equal(images[0, 0] == 255, ink) and np.array_equal(images[0, 0] == 0, ~ink)


# --------------------------------------------------------------------------------------- lookup


def test_lookup_order(isolated, monkeypatch):
    name = "images_background.zip"
    env = isolated / "env"
    shared = isolated / "shared" / "data"
    cache = isolated / "cache"
    for folder in (env / "omniglot", shared / "omniglot", cache / "omniglot"):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv(paths.ENV_DATA, str(env))
    monkeypatch.setattr(paths, "shared_data_dirs", lambda: [shared])

    assert find_omniglot(name, download=False) == env / "omniglot" / name
    (env / name).write_bytes(b"x")                       # the env folder may hold the zips directly
    assert find_omniglot(name, download=False) == env / name
    (env / name).unlink()
    (env / "omniglot" / name).unlink()
    assert find_omniglot(name, download=False) == shared / "omniglot" / name
    (shared / "omniglot" / name).unlink()
    assert find_omniglot(name, download=False) == cache / "omniglot" / name


def test_an_explicit_root_is_the_only_place_looked_in(isolated, monkeypatch):
    name = "images_background.zip"
    shared = isolated / "shared" / "data"
    (shared / "omniglot").mkdir(parents=True)
    (shared / "omniglot" / name).write_bytes(b"x")       # a copy elsewhere must not stand in for root
    monkeypatch.setenv(paths.ENV_DATA, str(shared))
    monkeypatch.setattr(paths, "shared_data_dirs", lambda: [shared])
    root = isolated / "root"
    root.mkdir()
    (root / name).write_bytes(b"x")
    assert find_omniglot(name, root=root, download=False) == root / name
    (root / name).unlink()
    (root / "omniglot").mkdir()
    (root / "omniglot" / name).write_bytes(b"x")
    assert find_omniglot(name, root=root, download=False) == root / "omniglot" / name
    (root / "omniglot" / name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        find_omniglot(name, root=root, download=False)
    assert str(root / name) in str(info.value) and str(shared) not in str(info.value)


def test_a_root_that_does_not_exist_is_an_error_naming_it(isolated, monkeypatch):
    shared = isolated / "shared" / "data"
    (shared / "omniglot").mkdir(parents=True)
    (shared / "omniglot" / "images_background.zip").write_bytes(b"x")
    monkeypatch.setattr(paths, "shared_data_dirs", lambda: [shared])
    with pytest.raises(FileNotFoundError, match=r"root '/does/not/exist' does not exist"):
        Omniglot("train", root="/does/not/exist", download=False)


def test_shared_folder_is_found_from_the_package():
    """The repository layout: <parent>/main/src/quickstudy/... and <parent>/shared/data."""
    package = Path(om.__file__).resolve()
    expected = [a / "shared" / "data" for a in package.parents if (a / "shared" / "data").is_dir()]
    if not expected:
        pytest.skip("no shared/data folder beside an ancestor of the package")
    assert expected[0] in paths.shared_data_dirs()


def test_missing_data_lists_every_place(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv(paths.ENV_DATA, str(env))
    with pytest.raises(FileNotFoundError) as info:
        Omniglot("train", download=False)
    message = str(info.value)
    for place in (env, env / "omniglot", isolated / "cache" / "omniglot"):
        assert str(place / "images_background.zip") in message
    assert "QUICKSTUDY_DATA" in message and "root=" in message
    assert "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip" in message


def test_failed_download_raises_file_not_found(isolated, monkeypatch):
    monkeypatch.setitem(om.OMNIGLOT_ARCHIVES, "images_background.zip",
                        (964, (isolated / "missing.zip").as_uri(), "0" * 32))
    with pytest.raises(FileNotFoundError, match="download into .* failed"):
        Omniglot("background", protocol="lake", download=True)
    assert not list((isolated / "cache").rglob("*.zip*"))


def test_download_is_checked_and_atomic(isolated, monkeypatch):
    source = make_archive(isolated / "source" / "images_background.zip", {"Alpha/character01": 20})
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    target = isolated / "target"
    monkeypatch.setitem(om.OMNIGLOT_ARCHIVES, "images_background.zip", (964, source.as_uri(), "f" * 32))
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        find_omniglot("images_background.zip", root=target, download=True)
    assert not target.exists() or not any(target.iterdir())      # no partial file left behind
    monkeypatch.setitem(om.OMNIGLOT_ARCHIVES, "images_background.zip", (964, source.as_uri(), md5))
    path = find_omniglot("images_background.zip", root=target, download=True)
    assert path == target / "images_background.zip"
    assert path.read_bytes() == source.read_bytes()
    # without root, downloads go to the user cache
    path = find_omniglot("images_background.zip", download=True)
    assert path == isolated / "cache" / "omniglot" / "images_background.zip"


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,words", [
    ({"protocol": "snell"}, ["protocol", "'snell'", "vinyals", "lake"]),
    ({"split": "validation"}, ["split", "'validation'", "trainval"]),
    ({"split": "val", "protocol": "lake"}, ["split", "'val'", "background", "evaluation"]),
    ({"image_size": 0}, ["image_size", "0"]),
    ({"image_size": 28.0}, ["image_size", "28.0"]),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        Omniglot(download=False, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_not_a_zip(isolated):
    bad = isolated / "data" / "images_background.zip"
    bad.parent.mkdir()
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a readable zip") as info:
        Omniglot("background", protocol="lake", root=bad.parent, download=False)
    assert str(bad) in str(info.value)


def test_truncated_zip(isolated):
    good = make_archive(isolated / "good.zip", {"Alpha/character01": 20})
    bad = isolated / "data" / "images_background.zip"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        Omniglot("background", protocol="lake", root=bad.parent, download=False)
    assert str(bad) in str(info.value)


def test_wrong_character_count(isolated):
    archive = make_archive(isolated / "data" / "images_background.zip",
                           {"Alpha/character01": 20, "Alpha/character02": 20})
    with pytest.raises(ValueError, match="expected 964 characters") as info:
        Omniglot("background", protocol="lake", root=archive.parent, download=False)
    assert str(archive) in str(info.value)


def test_wrong_drawing_count(isolated):
    archive = make_archive(isolated / "fake.zip", {"Alpha/character01": 20, "Alpha/character02": 19})
    with pytest.raises(ValueError, match="Alpha/character02") as info:
        om.decode_archive(archive, progress=False)
    assert "19 drawings" in str(info.value) and str(archive) in str(info.value)


def test_undecodable_png(isolated):
    member = "images_background/Alpha/character01/0001_05.png"
    archive = make_archive(isolated / "fake.zip", {"Alpha/character01": 20}, corrupt_member=member)
    with pytest.raises(ValueError) as info:
        om.decode_archive(archive, progress=False)
    assert str(archive) in str(info.value) and member in str(info.value)


def test_vinyals_classes_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        vinyals_classes("all")
