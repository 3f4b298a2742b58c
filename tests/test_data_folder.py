"""ImageFolder and load_images: users' own images, and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quickstudy.data import FewShotDataset, ImageFolder, image_files, load_images


def _square(path: Path, value: int = 0, background: int = 255, size=(40, 40), mode: str = "L") -> Path:
    """A light image with a dark square in the top-left quarter (dark-on-light drawing)."""
    array = np.full((size[1], size[0]), background, dtype=np.uint8)
    array[: size[1] // 2, : size[0] // 2] = value
    image = Image.fromarray(array, mode="L")
    if mode != "L":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "letters"
    _square(root / "alpha" / "2.png")
    _square(root / "alpha" / "1.png")
    _square(root / "alpha" / "3.PNG")
    _square(root / "beta" / "a.jpg", mode="RGB")
    _square(root / "beta" / "b.jpeg")
    _square(root / "gamma" / "x.bmp")
    _square(root / "gamma" / "y.gif", size=(30, 50))
    (root / "gamma" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _square(root / ".hidden" / "z.png")
    return root


def test_classes_and_shapes(folder):
    ds = ImageFolder(folder)
    assert isinstance(ds, FewShotDataset)
    assert ds.classes == ["alpha", "beta", "gamma"]
    assert ds.counts.tolist() == [3, 2, 2]
    assert ds.examples.shape == (7, 1, 28, 28) and ds.examples.dtype == torch.uint8
    assert [p.name for p in ds.files] == ["1.png", "2.png", "3.PNG", "a.jpg", "b.jpeg", "x.bmp", "y.gif"]


def test_pixels_and_invert(folder):
    plain = ImageFolder(folder).examples[0, 0]
    inverted = ImageFolder(folder, invert=True).examples[0, 0]
    assert torch.equal(inverted, 255 - plain)
    # dark square top-left on white: inverted, the square is bright and the rest dark
    assert inverted[:12, :12].float().mean() > 250 and inverted[16:, 16:].float().mean() < 5
    assert plain[:12, :12].float().mean() < 5


def test_image_size_and_channels(folder):
    ds = ImageFolder(folder, image_size=(20, 24), channels=3)
    assert ds.examples.shape == (7, 3, 20, 24)
    assert torch.equal(ds.examples[:, 0], ds.examples[:, 1])   # gray images stay gray in RGB


def test_transparent_background(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)             # fully transparent black
    rgba[5:15, 8:12] = (0, 0, 0, 255)                        # an opaque black stroke
    path = tmp_path / "c" / "stroke.png"
    path.parent.mkdir()
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = load_images([path], image_size=20, invert=True)[0, 0]
    assert int(image[10, 10]) == 255 and int(image[0, 0]) == 0
    image = load_images([path], image_size=20, invert=False)[0, 0]
    assert int(image[10, 10]) == 0 and int(image[0, 0]) == 0


def test_load_images_keeps_order(folder):
    files = image_files(folder / "alpha")
    assert [p.name for p in files] == ["1.png", "2.png", "3.PNG"]
    batch = load_images(list(reversed(files)), image_size=16)
    assert batch.shape == (3, 1, 16, 16) and batch.dtype == torch.uint8


# ---------------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(missing)


def test_root_is_a_file(tmp_path):
    path = _square(tmp_path / "single.png")
    with pytest.raises(ValueError, match="single.png"):
        ImageFolder(path)


def test_no_class_folders(tmp_path):
    root = tmp_path / "flat"
    _square(root / "a.png")
    with pytest.raises(ValueError, match="no class folders") as info:
        ImageFolder(root)
    assert str(root) in str(info.value)


def test_class_folder_without_images(folder):
    (folder / "delta").mkdir()
    (folder / "delta" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="has no images") as info:
        ImageFolder(folder)
    assert str(folder / "delta") in str(info.value)


def test_corrupt_image(folder):
    bad = folder / "beta" / "c.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="c.png") as info:
        ImageFolder(folder)
    assert str(bad) in str(info.value)


def test_truncated_image(folder):
    good = folder / "alpha" / "1.png"
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noisy).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        ImageFolder(folder)
    assert str(good) in str(info.value)


@pytest.mark.parametrize("kwargs,words", [
    ({"image_size": 0}, ["image_size", "0"]),
    ({"image_size": (28,)}, ["image_size", "(28,)"]),
    ({"image_size": 28.5}, ["image_size", "28.5"]),
    ({"channels": 2}, ["channels", "2"]),
])
def test_bad_arguments(folder, kwargs, words):
    with pytest.raises(ValueError) as info:
        ImageFolder(folder, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_load_images_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_images([])
    with pytest.raises(FileNotFoundError, match="ghost.png"):
        load_images([tmp_path / "ghost.png"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_images([bad])
