"""Any image PIL opens, as 8-bit grayscale or RGB: each mode's range is scaled to 0..255, never clipped.

PIL's own ``convert("L")`` clips the 16- and 32-bit integer modes and the float mode to 0..255, so a 16-bit
scan (``I;16``, values 0..65535) comes out white. Here:

* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 0..65535 scaled to 0..255;
* ``I`` (32-bit integers) and ``F`` (floats): scaled from the smallest standard range that holds the image's
  values, 0..1 (floats only), 0..255, 0..65535, else the image's own min..max (NaN counts as the low end);
* ``LAB``: converted to sRGB by a colour-management transform (``PIL.ImageCms``; PIL's plain conversion is not
  a colour conversion);
* modes with transparency (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, ``P`` with a transparent colour): composited
  onto the ``background`` grey level;
* every other mode (``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``): PIL's conversion.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["convert_8bit", "to_8bit"]

_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _scaled_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit grayscale, scaled from its range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for top in ((1.0,) if image.mode == "F" else ()) + (255.0, 65535.0):
            if low >= 0 and high <= top:
                low, high = 0.0, top
                break
        if high <= low:  # a flat image outside every standard range
            high = low + 1.0
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    scaled = np.rint((values - low) * (255.0 / (high - low)))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, transform)


def convert_8bit(image: Image.Image, channels: int = 1, background: int = 0) -> Image.Image:
    """``image`` as mode ``L`` (``channels=1``) or ``RGB`` (``channels=3``), by the rules of the module docstring;
    transparent pixels take the grey level ``background``."""
    target = "L" if channels == 1 else "RGB"
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scaled_to_l(image).convert(target)
    if mode == "LAB":
        return _lab_to_rgb(image).convert(target)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        if mode == "La":  # premultiplied: PIL converts it only to LA
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        underneath = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(underneath, rgba).convert(target)
    return image.convert(target)


def to_8bit(image: Image.Image, channels: int = 1, background: int = 0) -> np.ndarray:
    """:func:`convert_8bit` as a uint8 array ``[channels, H, W]``."""
    array = np.asarray(convert_8bit(image, channels, background), dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
