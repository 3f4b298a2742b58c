"""Glyphs: an embedded Omniglot-like data set that needs no download.

Each class is one Unicode character; each example is that character drawn with one of the TrueType
fonts that ship with matplotlib (DejaVu Sans / Serif / Sans Mono and STIX General, four weights and
slants each, plus the Computer Modern cmr10/cmb10/cmss10/cmti10/cmtt10/cmmi10 for ASCII letters and
digits) under a random affine distortion (rotation, shear, anisotropic scale, shift) and a random
stroke-width change (dilation or erosion). Characters are grouped into "alphabets" by Unicode block
(Basic Latin, Greek and Coptic, Cyrillic, Armenian, Georgian, Arrows, Mathematical Operators, Box
Drawing, Braille Patterns, ...), and the splits are by block, like Omniglot's background/evaluation
alphabets: no block of ``test`` (or ``val``) appears in ``train``.

Which characters are classes (fixed for a given set of fonts, independent of ``seed``):

* the code point is a letter, digit, punctuation or symbol (no spaces, controls, combining marks);
* it has no compatibility/canonical decomposition (so no accented variants of a base letter, no
  superscripts, circled or font-styled letters), which keeps classes visually distinct;
* at least 6 of the fonts, from at least 2 font families, map it in their ``cmap`` (read with
  fontTools: no tofu boxes) and draw some ink for it;
* its canonical drawing covers at least 2% of the canvas (no dots and commas);
* it is not a visual duplicate of an earlier class: Latin ``A``, Greek ``Α`` and Cyrillic ``А`` are
  one glyph, so only the first (in block order) is kept. Two characters are duplicates when their
  canonical 28x28 drawings, blurred 3x3, differ by less than 6% of their total ink (L1).

Images are uint8 ``[M, 1, S, S]``, strokes bright (255) on black, like :class:`Omniglot`. They are
rendered at 3x the target size and box-downsampled once. Every class's examples are drawn from a
NumPy generator seeded with ``(seed, code point)``, so results are identical across runs and
machines with the same fonts, Pillow and FreeType. The whole set (all splits) is cached under the
user cache directory, keyed by seed, image size, examples per class, a version string and a
fingerprint of the fonts and renderer.
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from functools import lru_cache

import numpy as np
import torch
from PIL import features
import PIL

from .._validation import check_int
from .base import FewShotDataset
from .paths import atomic_save_npz, cache_dir, load_npz
from .glyph_fonts import MIN_FAMILIES, MIN_FONTS, _blur, _fonts, _morph, _Renderer

__all__ = ["Glyphs", "glyph_blocks", "GLYPHS_VERSION"]

#: Part of the cache key: bump it whenever anything below changes what is rendered (fonts, blocks,
#: selection rules, distortion ranges, the renderer).
GLYPHS_VERSION = "1"


#: (Unicode block, first, last, split). The split of each block is fixed (not seeded), chosen so
#: that about 64% / 16% / 20% of the classes are train / val / test with the matplotlib fonts.
_BLOCKS: tuple[tuple[str, int, int, str], ...] = (
    ("Basic Latin", 0x0020, 0x007F, "train"),
    ("Latin-1 Supplement", 0x0080, 0x00FF, "train"),
    ("Latin Extended-A", 0x0100, 0x017F, "train"),
    ("Latin Extended-B", 0x0180, 0x024F, "train"),
    ("IPA Extensions", 0x0250, 0x02AF, "train"),
    ("Spacing Modifier Letters", 0x02B0, 0x02FF, "train"),
    ("Greek and Coptic", 0x0370, 0x03FF, "train"),
    ("Cyrillic", 0x0400, 0x04FF, "train"),
    ("Cyrillic Supplement", 0x0500, 0x052F, "train"),
    ("Armenian", 0x0530, 0x058F, "test"),
    ("Hebrew", 0x0590, 0x05FF, "test"),
    ("Arabic", 0x0600, 0x06FF, "val"),
    ("Lao", 0x0E80, 0x0EFF, "test"),
    ("Georgian", 0x10A0, 0x10FF, "test"),
    ("Phonetic Extensions", 0x1D00, 0x1D7F, "train"),
    ("Latin Extended Additional", 0x1E00, 0x1EFF, "train"),
    ("Greek Extended", 0x1F00, 0x1FFF, "train"),
    ("General Punctuation", 0x2000, 0x206F, "train"),
    ("Currency Symbols", 0x20A0, 0x20CF, "val"),
    ("Letterlike Symbols", 0x2100, 0x214F, "val"),
    ("Number Forms", 0x2150, 0x218F, "val"),
    ("Arrows", 0x2190, 0x21FF, "train"),
    ("Mathematical Operators", 0x2200, 0x22FF, "train"),
    ("Miscellaneous Technical", 0x2300, 0x23FF, "val"),
    ("Box Drawing", 0x2500, 0x257F, "test"),
    ("Block Elements", 0x2580, 0x259F, "test"),
    ("Geometric Shapes", 0x25A0, 0x25FF, "test"),
    ("Miscellaneous Symbols", 0x2600, 0x26FF, "val"),
    ("Dingbats", 0x2700, 0x27BF, "train"),
    ("Miscellaneous Mathematical Symbols-A", 0x27C0, 0x27EF, "val"),
    ("Supplemental Arrows-A", 0x27F0, 0x27FF, "val"),
    ("Braille Patterns", 0x2800, 0x28FF, "train"),
    ("Supplemental Arrows-B", 0x2900, 0x297F, "val"),
    ("Miscellaneous Mathematical Symbols-B", 0x2980, 0x29FF, "val"),
    ("Supplemental Mathematical Operators", 0x2A00, 0x2AFF, "train"),
    ("Miscellaneous Symbols and Arrows", 0x2B00, 0x2BFF, "val"),
    ("Latin Extended-C", 0x2C60, 0x2C7F, "val"),
    ("Cyrillic Extended-B", 0xA640, 0xA69F, "train"),
    ("Latin Extended-D", 0xA720, 0xA7FF, "train"),
)

_SPLITS = ("train", "val", "test", "trainval", "all")
_MIN_INK = 0.02          # canonical drawing must cover this fraction of the canvas
_DUPLICATE = 0.06        # blurred L1 / total ink below this: a duplicate of an earlier class
_SELECT_SIZE = 28        # the resolution at which classes are selected (independent of image_size)

# distortion ranges (per example)
_ROTATION = 15.0         # degrees, uniform in [-r, r]
_SHEAR = 0.25            # x += shear * y, uniform in [-s, s]
_SCALE = (0.80, 1.05)    # overall scale, uniform
_ASPECT = 0.12           # log aspect ratio, uniform in [-a, a]
_SHIFT = 0.06            # fraction of the canvas, uniform in [-t, t] per axis
_P_DILATE, _P_ERODE = 0.35, 0.15


def _fingerprint() -> str:
    """Changes when the fonts or the rasteriser change (part of the cache key)."""
    parts = [GLYPHS_VERSION, PIL.__version__, str(features.version("freetype2"))]
    parts += [f"{path.name}:{path.stat().st_size}" for path, _, _ in _fonts()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _candidates() -> list[tuple[int, int, tuple[int, ...]]]:
    """(block index, code point, fonts) for every code point that enough fonts map."""
    fonts = _fonts()
    out = []
    for block, (_, first, last, _) in enumerate(_BLOCKS):
        for code in range(first, last + 1):
            char = chr(code)
            if unicodedata.category(char)[0] in "ZCM" or unicodedata.normalize("NFKD", char) != char:
                continue
            having = tuple(i for i, (_, _, codes) in enumerate(fonts) if code in codes)
            if len(having) < MIN_FONTS or len({fonts[i][1] for i in having}) < MIN_FAMILIES:
                continue
            out.append((block, code, having))
    return out


@lru_cache(maxsize=1)
def _classes() -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """The selected classes: (block index, code point, fonts that draw it), in block order."""
    renderer = _Renderer(_SELECT_SIZE)
    candidates = _candidates()
    kept = []
    signatures = np.empty((len(candidates), _SELECT_SIZE * _SELECT_SIZE), dtype=np.float32)
    masses = np.empty(len(candidates), dtype=np.float32)
    for block, code, having in candidates:
        drawn = [f for f in having if renderer.has_ink(code, f)]
        if len(drawn) < MIN_FONTS or len({_fonts()[f][1] for f in drawn}) < MIN_FAMILIES:
            continue
        canonical = renderer.draw(code, drawn[0])
        if canonical is None or canonical.sum() < _MIN_INK * 255 * canonical.size:
            continue
        blurred = _blur(canonical.astype(np.float32) / 255.0).ravel()
        mass = float(blurred.sum())
        n = len(kept)
        # |mass_a - mass_b| <= L1(a - b): only classes of similar ink can be duplicates
        near = np.nonzero(np.abs(masses[:n] - mass) < _DUPLICATE * (masses[:n] + mass))[0]
        if near.size:
            distance = np.abs(signatures[near] - blurred).sum(1) / (masses[near] + mass)
            if bool((distance < _DUPLICATE).any()):
                continue
        kept.append((block, code, tuple(drawn)))
        signatures[n] = blurred
        masses[n] = mass
    return tuple(kept)


def glyph_blocks() -> dict[str, dict[str, object]]:
    """For each Unicode block used: its split and number of classes (block order)."""
    counts: dict[int, int] = {}
    for block, _, _ in _classes():
        counts[block] = counts.get(block, 0) + 1
    return {name: {"split": split, "classes": counts.get(index, 0)}
            for index, (name, _, _, split) in enumerate(_BLOCKS) if counts.get(index, 0)}


# -------------------------------------------------------------------------------------- rendering


def _render_class(renderer: _Renderer, code: int, fonts: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """``count`` distorted drawings of one character, uint8 [count, size, size]."""
    rng = np.random.default_rng([seed, code])
    order = [fonts[i] for i in rng.permutation(len(fonts))]
    angle = np.deg2rad(rng.uniform(-_ROTATION, _ROTATION, count))
    shear = rng.uniform(-_SHEAR, _SHEAR, count)
    scale = rng.uniform(*_SCALE, count)
    aspect = np.sqrt(np.exp(rng.uniform(-_ASPECT, _ASPECT, count)))
    shift = rng.uniform(-_SHIFT, _SHIFT, (count, 2)) * renderer.canvas
    stroke = rng.uniform(size=count)
    cos, sin = np.cos(angle), np.sin(angle)
    sx, sy = scale * aspect, scale / aspect
    # rotation @ [[1, shear], [0, 1]] @ diag(sx, sy)
    matrices = np.stack([np.stack([cos * sx, (cos * shear - sin) * sy], -1),
                         np.stack([sin * sx, (sin * shear + cos) * sy], -1)], -2)
    matrices, shift = matrices.tolist(), shift.tolist()
    canvases = np.empty((count, renderer.canvas, renderer.canvas), dtype=np.uint8)
    turn = 0
    for i in range(count):
        # cycle through the fonts in the drawn order, skipping one that draws nothing at this size
        for _ in range(len(order)):
            canvas = renderer.transform(code, order[turn % len(order)], matrices[i], shift[i])
            turn += 1
            if canvas is not None:
                break
        else:
            raise RuntimeError(f"Glyphs: no font draws U+{code:04X} at {renderer.size}px")
        canvases[i] = canvas
    dilate = stroke < _P_DILATE
    erode = stroke > 1.0 - _P_ERODE
    if dilate.any():
        canvases[dilate] = _morph(canvases[dilate], renderer.radius, grow=True)
    if erode.any():
        thinner = _morph(canvases[erode], renderer.radius, grow=False)
        # keep an erosion only where it does not wipe out thin strokes
        ink_before = canvases[erode].sum(axis=(1, 2), dtype=np.uint64)
        ink_after = thinner.sum(axis=(1, 2), dtype=np.uint64)
        fine = ink_after > 0.4 * ink_before
        rows = np.nonzero(erode)[0][fine]
        canvases[rows] = thinner[fine]
    return renderer.downsample(canvases)


def _generate(seed: int, image_size: int, examples_per_class: int,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = _classes()
    renderer = _Renderer(image_size)
    images = np.empty((len(classes), examples_per_class, image_size, image_size), dtype=np.uint8)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(classes), desc="Rendering glyphs", unit="class", file=sys.stderr, mininterval=0.5)
    try:
        for c, (_, code, fonts) in enumerate(classes):
            images[c] = _render_class(renderer, code, fonts, examples_per_class, seed)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    codes = np.array([code for _, code, _ in classes], dtype=np.int64)
    blocks = np.array([block for block, _, _ in classes], dtype=np.int64)
    return images, codes, blocks


def _load(seed: int, image_size: int, examples_per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    name = (f"glyphs-v{GLYPHS_VERSION}-seed{seed}-{image_size}px-{examples_per_class}ex-"
            f"{_fingerprint()}.npz")
    path = cache_dir("glyphs", create=False) / name
    cached = load_npz(path, ("images", "codes", "blocks"))
    if (cached is not None and cached["images"].dtype == np.uint8
            and cached["images"].shape[1:] == (examples_per_class, image_size, image_size)
            and cached["codes"].shape == cached["blocks"].shape == cached["images"].shape[:1]
            and 0 <= cached["blocks"].min() and cached["blocks"].max() < len(_BLOCKS)):
        return cached["images"], cached["codes"], cached["blocks"]
    images, codes, blocks = _generate(seed, image_size, examples_per_class)
    try:
        atomic_save_npz(path, images=images, codes=codes, blocks=blocks)
    except OSError as exc:
        print(f"quickstudy: could not write the glyph cache {path}: {exc}", file=sys.stderr)
    return images, codes, blocks


# ---------------------------------------------------------------------------------------- dataset


class Glyphs(FewShotDataset):
    """Characters of many scripts and symbol sets, drawn in many fonts: a few-shot data set that is
    generated locally in seconds (see the module docstring for how).

    Args:
        split: ``train`` / ``val`` / ``test`` / ``trainval`` / ``all``; splits are by Unicode block.
        seed: seeds the distortions and the font order of every class (same seed, same tensors).
        image_size: side of the square images (default 28).
        examples_per_class: drawings per class (default 20, like Omniglot).

    Class names are ``"<Unicode block>/U+XXXX"``; ``.codepoints`` and ``.blocks`` hold the code point
    and block of each class.
    """

    def __init__(self, split: str = "train", seed: int = 0, image_size: int = 28, examples_per_class: int = 20):
        if split not in _SPLITS:
            raise ValueError(f"Glyphs: split must be one of {_SPLITS}, got {split!r}")
        seed = check_int("Glyphs", "seed", seed, 0)
        image_size = check_int("Glyphs", "image_size", image_size, 8)
        examples_per_class = check_int("Glyphs", "examples_per_class", examples_per_class)
        images, codes, blocks = _load(seed, image_size, examples_per_class)
        wanted = {"trainval": ("train", "val"), "all": ("train", "val", "test")}.get(split, (split,))
        keep = np.array([_BLOCKS[b][3] in wanted for b in blocks], dtype=bool)
        index = np.nonzero(keep)[0]
        data = torch.from_numpy(images[index]) if len(index) != len(codes) else torch.from_numpy(images)
        examples = data.reshape(-1, 1, image_size, image_size).contiguous()
        names = [f"{_BLOCKS[blocks[i]][0]}/U+{codes[i]:04X}" for i in index]
        starts = torch.arange(0, len(index) + 1, dtype=torch.int64) * examples_per_class
        super().__init__(examples, starts, names, name=f"glyphs-{split}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.codepoints = [int(codes[i]) for i in index]
        self.blocks = [_BLOCKS[blocks[i]][0] for i in index]

    @property
    def characters(self) -> list[str]:
        """The character of each class."""
        return [chr(code) for code in self.codepoints]
