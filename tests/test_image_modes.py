"""Every image mode PIL reads becomes the same 8-bit picture: a left-to-right gradient stays a gradient
(scaled from the mode's range, never clipped to white or black), in grayscale and in RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from quickstudy.data import load_images
from quickstudy.data.image_modes import to_8bit

WIDTH = 256
GRADIENT = np.tile(np.arange(WIDTH, dtype=np.uint8), (8, 1))  # 0..255 left to right


def gray(values) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values))


def sixteen_bit(mode: str, dtype: str) -> Image.Image:
    """The gradient as 16-bit values in a given byte order (PIL's own conversions between these clip)."""
    values = (GRADIENT.astype(np.uint16) * 257).astype(dtype)
    return Image.frombytes(mode, (WIDTH, GRADIENT.shape[0]), values.tobytes())


def palette_image() -> Image.Image:
    image = gray(GRADIENT).convert("P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.putdata(GRADIENT.reshape(-1).tolist())
    return image


# mode -> (how to make a gradient in it, the file format that stores it or None, tolerance in grey levels)
MODES = {
    "1": (lambda: gray(GRADIENT).convert("1", dither=Image.Dither.NONE), "png", 0),
    "L": (lambda: gray(GRADIENT), "png", 0),
    "LA": (lambda: gray(GRADIENT).convert("LA"), "png", 0),
    "La": (lambda: gray(GRADIENT).convert("LA").convert("La"), None, 0),
    "P": (palette_image, "png", 0),
    "PA": (lambda: palette_image().convert("PA"), "tiff", 0),
    "RGB": (lambda: gray(GRADIENT).convert("RGB"), "png", 0),
    "RGBA": (lambda: gray(GRADIENT).convert("RGBA"), "png", 0),
    "RGBa": (lambda: gray(GRADIENT).convert("RGBA").convert("RGBa"), None, 0),
    "RGBX": (lambda: gray(GRADIENT).convert("RGBX"), None, 0),
    "CMYK": (lambda: gray(GRADIENT).convert("CMYK"), "tiff", 1),
    "YCbCr": (lambda: gray(GRADIENT).convert("RGB").convert("YCbCr"), "tiff", 2),
    "HSV": (lambda: gray(GRADIENT).convert("RGB").convert("HSV"), None, 1),
    "LAB": (lambda: _lab(), "tiff", 3),
    "I;16": (lambda: gray(GRADIENT.astype(np.uint16) * 257), "png", 0),
    "I;16B": (lambda: sixteen_bit("I;16B", ">u2"), "tiff", 0),
    "I;16L": (lambda: sixteen_bit("I;16L", "<u2"), None, 0),
    "I;16N": (lambda: sixteen_bit("I;16N", "=u2"), None, 0),
    "I (16-bit values)": (lambda: gray(GRADIENT.astype(np.int32) * 257), "tiff", 0),
    "I (8-bit values)": (lambda: gray(GRADIENT.astype(np.int32)), "tiff", 0),
    "I (wider range)": (lambda: gray(GRADIENT.astype(np.int32) * 100_000 - 7), "tiff", 0),
    "F (0 to 1)": (lambda: gray(GRADIENT.astype(np.float32) / 255), "tiff", 0),
    "F (any range)": (lambda: gray(GRADIENT.astype(np.float32) * 0.04 - 3.0), "tiff", 0),
}


def _lab() -> Image.Image:
    from PIL import ImageCms

    srgb_to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(gray(GRADIENT).convert("RGB"), srgb_to_lab)


def expected(name: str) -> np.ndarray:
    return np.where(GRADIENT >= 128, 255, 0) if name == "1" else GRADIENT


def check_gradient(array: np.ndarray, name: str, tolerance: int) -> None:
    target = expected(name).astype(int)
    for channel in array.astype(int):
        error = np.abs(channel - target).max()
        assert error <= tolerance, f"{name}: off by up to {error} grey levels (row 0: {channel[0, ::32].tolist()})"


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_loads_as_the_same_gradient(name, channels, tmp_path):
    make, file_format, tolerance = MODES[name]
    image = make()
    assert image.mode == name.split(" ")[0]
    array = to_8bit(image, channels=channels)
    assert array.dtype == np.uint8 and array.shape == (channels, *GRADIENT.shape)
    check_gradient(array, name, tolerance)
    if file_format is not None:  # and through a file, as a user's image folder holds it
        path = tmp_path / f"image.{file_format}"
        image.save(path)
        loaded = load_images([path], image_size=(GRADIENT.shape[0], WIDTH), channels=channels)[0].numpy()
        check_gradient(loaded, name, tolerance)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "sixteen.png"
    gray(GRADIENT.astype(np.uint16) * 257).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    row = load_images([path], image_size=(8, WIDTH))[0, 0, 0].tolist()
    assert row[:4] == [0, 1, 2, 3] and row[-1] == 255 and row.count(255) == 1


def test_a_flat_float_image_is_not_a_division_by_zero():
    array = to_8bit(gray(np.full((4, 4), 7.5, dtype=np.float32)), channels=1)
    assert np.unique(array).size == 1
