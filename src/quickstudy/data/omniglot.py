"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1623 handwritten characters from 50 alphabets,
20 drawings each, read from the original archives ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters).

Images are stored as uint8 ``[M, 1, H, W]`` with the strokes bright (255) on a dark (0) background:
the white-background 105x105 PNGs are converted to grayscale, resized with Lanczos (antialiased)
resampling to ``image_size`` and inverted. Each archive is decoded once and cached under the user
cache directory (``$QUICKSTUDY_CACHE`` or ``~/.cache/quickstudy``), keyed by the archive's size,
modification time and ``image_size``.

Protocols:

* ``"vinyals"`` (Vinyals et al. 2016, the class split of Snell et al. 2017): ``train`` / ``val`` /
  ``test`` / ``trainval`` with 4112 / 688 / 1692 / 4800 classes; a class is one character rotated by
  0, 90, 180 or 270 degrees **counter-clockwise** (``torch.rot90(x, k=deg // 90, dims=(-2, -1))``,
  the same direction as :func:`~quickstudy.data.rotate_classes` and PIL's ``Image.rotate``). Class
  names are the lines of the split files, ``Alphabet/characterNN/rotDDD``, in file order.
* ``"lake"``: ``background`` (alias ``train``) / ``evaluation`` (alias ``test``), 964 / 659
  characters, no rotation, class names ``Alphabet/characterNN``.
* ``split="all"`` under either protocol: all 1623 characters, no rotation.
"""

from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._validation import check_int
from .base import FewShotDataset
from .paths import atomic_save_npz, cache_dir, download_file, load_npz, search_dirs

__all__ = ["Omniglot", "find_omniglot", "decode_archive", "load_archive", "vinyals_classes", "OMNIGLOT_ARCHIVES"]

_CACHE_VERSION = "1"
DRAWINGS_PER_CHARACTER = 20
ORIGINAL_SIZE = 105

#: archive file name -> (number of characters, official URL, md5 of the original archive)
OMNIGLOT_ARCHIVES: dict[str, tuple[int, str, str]] = {
    "images_background.zip": (
        964, "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
        "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": (
        659, "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
        "6b91aef0f799c5bb55b94e3f2daec811"),
}

_SPLITS = {
    "vinyals": ("train", "val", "test", "trainval", "all"),
    "lake": ("background", "evaluation", "train", "test", "all"),
}
_LAKE_ALIASES = {"train": "background", "test": "evaluation"}
_MEMBER = re.compile(r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>[^/]+)/(?P<file>[^/]+\.png)$")
_SPLIT_LINE = re.compile(r"^(?P<character>[^/]+/character\d+)/rot(?P<angle>\d{3})$")


# ----------------------------------------------------------------------------------------- finding


def find_omniglot(filename: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The path of one Omniglot archive (``images_background.zip`` or ``images_evaluation.zip``).

    Searched in: ``root`` (and ``root/omniglot``) only, when it is given; otherwise ``$QUICKSTUDY_DATA`` (and
    its ``omniglot/``), ``shared/data/omniglot`` beside an ancestor of the package or the working directory,
    then the user cache (``$QUICKSTUDY_CACHE/omniglot``). When absent and ``download`` is true, the original
    archive is downloaded (md5-checked) into ``root`` if given, else into the user cache.
    Raises ``FileNotFoundError`` naming ``root`` when it does not exist (and ``download`` is false), and
    listing every place looked in when the archive cannot be found or fetched.
    """
    if filename not in OMNIGLOT_ARCHIVES:
        raise ValueError(f"find_omniglot: filename must be one of {sorted(OMNIGLOT_ARCHIVES)}, got {filename!r}")
    if root is not None and not download and not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"Omniglot: root {str(root)!r} does not exist (or is not a folder); give the folder "
                                f"that holds {filename}, or leave root out to use the default places")
    places = search_dirs("omniglot", root)
    for _, folder in places:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    _, url, md5 = OMNIGLOT_ARCHIVES[filename]
    failure = ""
    if download:
        target_dir = Path(root).expanduser() if root is not None else cache_dir("omniglot", create=False)
        target = target_dir / filename
        try:
            return download_file(url, target, md5=md5)
        except (OSError, ValueError) as exc:
            failure = f"\nThe download into {target} failed: {exc}"
    looked = "\n".join(f"  - {folder / filename}  ({label})" for label, folder in places)
    raise FileNotFoundError(
        f"Omniglot archive {filename!r} not found. Looked in:\n{looked}{failure}\n"
        f"To get it: download {url} (md5 {md5}) and either pass root='<folder holding it>', "
        f"set the QUICKSTUDY_DATA environment variable to that folder (or to a folder holding "
        f"omniglot/{filename}), or call with download=True while online."
    )


# ---------------------------------------------------------------------------------------- decoding


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """One 105x105 Omniglot PNG (black strokes on white) -> uint8 [S, S], strokes bright."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        gray = image.convert("L")
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(gray, dtype=np.uint8)


def _list_characters(path: Path, archive: zipfile.ZipFile) -> dict[str, list[str]]:
    """``"Alphabet/characterNN" -> sorted PNG member names`` from the archive listing."""
    characters: dict[str, list[str]] = {}
    for member in archive.namelist():
        if member.endswith("/"):
            continue
        match = _MEMBER.match(member)
        if match is None:
            if member.lower().endswith(".png"):
                raise ValueError(f"{path}: unexpected member {member!r}; expected "
                                 f"images_<set>/<Alphabet>/characterNN/XXXX_YY.png")
            continue  # stray non-image files (e.g. .DS_Store) are ignored
        key = f"{match['alphabet']}/{match['character']}"
        characters.setdefault(key, []).append(member)
    return {key: sorted(characters[key]) for key in sorted(characters)}


def decode_archive(path: str | os.PathLike, image_size: int = 28,
                   expected_characters: int | None = None,
                   progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode an Omniglot zip into ``uint8 [characters, 20, S, S]`` (strokes bright) and the
    character names ``Alphabet/characterNN`` (sorted).

    Raises ``ValueError`` naming the archive when it is not a readable zip, when a character does
    not have exactly 20 drawings, when the number of characters differs from
    ``expected_characters``, or (naming the member too) when a PNG cannot be decoded.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable zip archive ({exc}); delete it and download "
                         f"or copy it again") from exc
    with archive:
        characters = _list_characters(path, archive)
        if expected_characters is not None and len(characters) != expected_characters:
            raise ValueError(f"{path}: expected {expected_characters} characters "
                             f"(Alphabet/characterNN folders), found {len(characters)}")
        if not characters:
            raise ValueError(f"{path}: no Omniglot PNGs (images_<set>/<Alphabet>/characterNN/*.png) found")
        for key, members in characters.items():
            if len(members) != DRAWINGS_PER_CHARACTER:
                raise ValueError(f"{path}: character {key!r} has {len(members)} drawings "
                                 f"(first member {members[0]!r}), expected {DRAWINGS_PER_CHARACTER}")
        names = list(characters)
        out = np.empty((len(names), DRAWINGS_PER_CHARACTER, image_size, image_size), dtype=np.uint8)
        total = len(names) * DRAWINGS_PER_CHARACTER
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, desc=f"Decoding {path.name}", unit="img", file=sys.stderr,
                       mininterval=0.5)
        try:
            for c, key in enumerate(names):
                for d, member in enumerate(characters[key]):
                    try:
                        data = archive.read(member)
                        out[c, d] = _decode_png(data, image_size)
                    except Exception as exc:  # noqa: BLE001 - any failure names the member
                        raise ValueError(f"{path}: cannot decode member {member!r}: "
                                         f"{type(exc).__name__}: {exc}") from exc
                if bar is not None:
                    bar.update(DRAWINGS_PER_CHARACTER)
        finally:
            if bar is not None:
                bar.close()
    return out, names


def _cache_path(path: Path, image_size: int) -> Path:
    stat = path.stat()
    stem = path.name.removesuffix(".zip")
    return cache_dir("omniglot", create=False) / (
        f"{stem}-{stat.st_size}-{stat.st_mtime_ns}-{image_size}px-v{_CACHE_VERSION}.npz")


def load_archive(path: str | os.PathLike, image_size: int = 28) -> tuple[np.ndarray, list[str]]:
    """:func:`decode_archive` with the expected character count, through the cache."""
    path = Path(path)
    expected = OMNIGLOT_ARCHIVES.get(path.name, (None,))[0]
    cache = _cache_path(path, image_size)
    cached = load_npz(cache, ("images", "names"))
    if cached is not None:
        images, names = cached["images"], [str(n) for n in cached["names"]]
        if (images.dtype == np.uint8 and images.shape[1:] == (DRAWINGS_PER_CHARACTER, image_size, image_size)
                and images.shape[0] == len(names) and (expected is None or len(names) == expected)):
            return images, names
    images, names = decode_archive(path, image_size, expected_characters=expected)
    try:
        atomic_save_npz(cache, images=images, names=np.array(names, dtype=np.str_))
    except OSError as exc:  # a read-only cache must not stop the user
        print(f"quickstudy: could not write the Omniglot cache {cache}: {exc}", file=sys.stderr)
    return images, names


# ------------------------------------------------------------------------------------------ splits


def vinyals_classes(split: str) -> list[str]:
    """The class names of a Vinyals split (lines of the shipped ``splits/vinyals/<split>.txt``)."""
    allowed = _SPLITS["vinyals"][:-1]
    if split not in allowed:
        raise ValueError(f"vinyals_classes: split must be one of {allowed}, got {split!r}")
    text = resources.files(__package__).joinpath("splits", "vinyals", f"{split}.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------- dataset


class Omniglot(FewShotDataset):
    """Omniglot as a :class:`~quickstudy.data.FewShotDataset`: uint8 ``[M, 1, S, S]``, strokes bright.

    Args:
        split: ``train``/``val``/``test``/``trainval``/``all`` (protocol ``vinyals``) or
            ``background``/``evaluation`` (aliases ``train``/``test``)/``all`` (protocol ``lake``).
        protocol: ``"vinyals"`` (rotation-augmented classes, the usual few-shot benchmark) or
            ``"lake"`` (the original background/evaluation alphabets).
        root: a folder holding the archives (or an ``omniglot/`` folder with them); see
            :func:`find_omniglot` for the full lookup order.
        download: fetch the original archives when they are nowhere to be found.
        image_size: side of the square images (default 28; 105 keeps the original resolution).

    Example:
        >>> train = Omniglot("train")               # 4112 classes x 20 drawings, 28x28
        >>> test = Omniglot("test")                 # 1692 classes
    """

    def __init__(self, split: str = "train", protocol: str = "vinyals", root: str | os.PathLike | None = None,
                 download: bool = True, image_size: int = 28):
        if protocol not in _SPLITS:
            raise ValueError(f"Omniglot: protocol must be one of {tuple(_SPLITS)}, got {protocol!r}")
        if split not in _SPLITS[protocol]:
            raise ValueError(f"Omniglot: split must be one of {_SPLITS[protocol]} for protocol "
                             f"{protocol!r}, got {split!r}")
        image_size = check_int("Omniglot", "image_size", image_size)
        if protocol == "lake":
            split = _LAKE_ALIASES.get(split, split)
        needed = (["images_background.zip"] if split == "background" else
                  ["images_evaluation.zip"] if split == "evaluation" else list(OMNIGLOT_ARCHIVES))
        self.archives = [find_omniglot(name, root=root, download=download) for name in needed]
        parts = [load_archive(path, image_size) for path in self.archives]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        names = [n for p in parts for n in p[1]]
        characters = torch.from_numpy(images)  # [chars, 20, S, S]

        if protocol == "vinyals" and split != "all":
            classes = vinyals_classes(split)
            index = {name: i for i, name in enumerate(names)}
            rows, turns = [], []
            for number, line in enumerate(classes, start=1):
                match = _SPLIT_LINE.match(line)
                angle = int(match["angle"]) if match else -1
                if match is None or angle not in (0, 90, 180, 270):
                    raise ValueError(f"Omniglot: line {number} of splits/vinyals/{split}.txt is {line!r}; "
                                     f"expected 'Alphabet/characterNN/rotDDD' with DDD in 000/090/180/270")
                if match["character"] not in index:
                    raise ValueError(f"Omniglot: line {number} of splits/vinyals/{split}.txt names "
                                     f"{match['character']!r}, which is in neither archive "
                                     f"({', '.join(str(p) for p in self.archives)})")
                rows.append(index[match["character"]])
                turns.append(angle // 90)
            rows_t, turns_t = torch.tensor(rows), torch.tensor(turns)
            data = characters[rows_t]
            for k in (1, 2, 3):
                selected = torch.nonzero(turns_t == k).flatten()
                if selected.numel():
                    data[selected] = torch.rot90(data[selected], k=k, dims=(-2, -1))
        else:
            classes, data = names, characters
        examples = data.reshape(-1, 1, image_size, image_size).contiguous()
        starts = torch.arange(0, len(classes) + 1, dtype=torch.int64) * DRAWINGS_PER_CHARACTER
        super().__init__(examples, starts, classes, name=f"omniglot-{protocol}-{split}")
        self.split, self.protocol, self.image_size = split, protocol, image_size
