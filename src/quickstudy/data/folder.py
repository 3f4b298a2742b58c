"""Your own images as a few-shot data set: ``root/<class name>/<image files>``.

Images of any mode PIL reads (16-bit, float, palette, CMYK, ...: :mod:`.image_modes`, scaled, never clipped) are
converted to grayscale (``channels=1``) or RGB (``channels=3``), resized with Lanczos
(antialiased) resampling to ``image_size`` and stored as uint8 ``[M, C, H, W]``. quickstudy's image
convention is bright strokes on a dark background (like :class:`~quickstudy.data.Omniglot`); pass
``invert=True`` for dark-on-light drawings (ink on paper, scans). Transparent pixels are composited
onto the background the image will end up with: black, or white before inverting when ``invert``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import FewShotDataset
from .image_modes import convert_8bit

__all__ = ["ImageFolder", "load_images", "image_files", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _image_size(value) -> tuple[int, int]:
    """``int`` or ``(height, width)`` -> ``(height, width)``, validated."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of positive ints, "
                         f"got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of positive ints, "
                         f"got {value!r}")
    return pair


def _channels(value) -> int:
    if value not in (1, 3) or isinstance(value, bool):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {value!r}")
    return int(value)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by extension, case-insensitive; hidden files
    skipped), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_one(path: Path, size: tuple[int, int], channels: int, invert: bool) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()  # every mode PIL reads, scaled to 8 bits (16-bit and float images too)
            converted = convert_8bit(image, channels, background=255 if invert else 0)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    height, width = size
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(converted, dtype=np.uint8)
    if invert:
        array = 255 - array
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_images(paths: Sequence[str | os.PathLike], image_size: int | tuple[int, int] = 28,
                channels: int = 1, invert: bool = False) -> torch.Tensor:
    """Read image files into one uint8 tensor ``[N, channels, H, W]`` (in the order given).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable or corrupt one (and for an empty ``paths``).
    """
    size = _image_size(image_size)
    channels = _channels(channels)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load_images: paths is empty; expected at least one image file")
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    for i, path in enumerate(paths):
        if not path.is_file():
            raise FileNotFoundError(f"load_images: image file {path} does not exist")
        out[i] = _load_one(path, size, channels, invert)
    return torch.from_numpy(out)


class ImageFolder(FewShotDataset):
    """A few-shot data set from ``root/<class name>/*.png|jpg|jpeg|bmp|gif``.

    Classes are the sub-folders of ``root`` (sorted by name; hidden ones skipped), examples the
    image files in each (sorted by name). Examples are uint8 ``[M, channels, H, W]``.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: side of the square images, or ``(height, width)``.
        channels: 1 (grayscale) or 3 (RGB).
        invert: ``255 - pixel`` after loading, for dark drawings on a light background (quickstudy's
            convention is bright strokes on dark, like Omniglot).

    Raises ``FileNotFoundError`` when ``root`` is missing, ``ValueError`` when it holds no class
    folder, when a class folder holds no images, or (naming the file) when an image cannot be read.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | tuple[int, int] = 28, channels: int = 1,
                 invert: bool = False):
        size = _image_size(image_size)
        channels = _channels(channels)
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"ImageFolder: root {str(root)!r} does not exist")
        if not root.is_dir():
            raise ValueError(f"ImageFolder: root {str(root)!r} is not a folder; expected a folder with "
                             f"one sub-folder of images per class")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"ImageFolder: root {str(root)!r} has no class folders; expected "
                             f"root/<class name>/<images> with extensions {', '.join(IMAGE_EXTENSIONS)}")
        files: list[list[Path]] = []
        for folder in class_dirs:
            found = image_files(folder)
            if not found:
                raise ValueError(f"ImageFolder: class folder {str(folder)!r} has no images; expected files "
                                 f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
            files.append(found)
        examples = load_images([p for group in files for p in group], size, channels, invert)
        counts = torch.tensor([len(group) for group in files], dtype=torch.int64)
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        super().__init__(examples, starts, [p.name for p in class_dirs], name=f"folder:{root.name}")
        self.root, self.image_size, self.channels, self.invert = root, size, channels, invert
        self.files = [p for group in files for p in group]
