"""The fonts and the rasteriser behind :class:`~quickstudy.data.Glyphs`: which of matplotlib's TrueType fonts
draw which characters, and a renderer that draws a glyph under an affine distortion and a stroke-width change."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["MIN_FONTS", "MIN_FAMILIES"]

_ALNUM = frozenset(range(0x30, 0x3A)) | frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))
_ALPHA = frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))

#: (font file in matplotlib's fonts/ttf, family, allowed code points or None for the whole cmap).
#: The Computer Modern (BaKoMa) fonts use TeX encodings outside ASCII letters and digits, so only
#: those code points are trusted from them.
_FONTS: tuple[tuple[str, str, frozenset[int] | None], ...] = (
    ("DejaVuSans.ttf", "DejaVu Sans", None),
    ("DejaVuSans-Bold.ttf", "DejaVu Sans", None),
    ("DejaVuSans-Oblique.ttf", "DejaVu Sans", None),
    ("DejaVuSans-BoldOblique.ttf", "DejaVu Sans", None),
    ("DejaVuSerif.ttf", "DejaVu Serif", None),
    ("DejaVuSerif-Bold.ttf", "DejaVu Serif", None),
    ("DejaVuSerif-Italic.ttf", "DejaVu Serif", None),
    ("DejaVuSerif-BoldItalic.ttf", "DejaVu Serif", None),
    ("DejaVuSansMono.ttf", "DejaVu Sans Mono", None),
    ("DejaVuSansMono-Bold.ttf", "DejaVu Sans Mono", None),
    ("DejaVuSansMono-Oblique.ttf", "DejaVu Sans Mono", None),
    ("DejaVuSansMono-BoldOblique.ttf", "DejaVu Sans Mono", None),
    ("STIXGeneral.ttf", "STIX General", None),
    ("STIXGeneralBol.ttf", "STIX General", None),
    ("STIXGeneralItalic.ttf", "STIX General", None),
    ("STIXGeneralBolIta.ttf", "STIX General", None),
    ("cmr10.ttf", "Computer Modern", _ALNUM),
    ("cmb10.ttf", "Computer Modern", _ALNUM),
    ("cmss10.ttf", "Computer Modern", _ALNUM),
    ("cmti10.ttf", "Computer Modern", _ALNUM),
    ("cmtt10.ttf", "Computer Modern", _ALNUM),
    ("cmmi10.ttf", "Computer Modern", _ALPHA),
)

MIN_FONTS = 6
MIN_FAMILIES = 2
_SUPERSAMPLE = 3         # render at 3x, box-downsample once
_EM = 0.75               # the font's em square spans this fraction of the canvas
_CENTER = 0.30           # the canvas centre sits this many em above the baseline
_FIT = 0.40              # a glyph reaching further than this (fraction of canvas) from the centre is shrunk


# ------------------------------------------------------------------------------------------ fonts


def _font_dir() -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=1)
def _fonts() -> tuple[tuple[Path, str, frozenset[int]], ...]:
    """The usable fonts: (path, family, code points it can draw), in the fixed order of _FONTS."""
    from fontTools.ttLib import TTFont

    folder = _font_dir()
    out = []
    for filename, family, allowed in _FONTS:
        path = folder / filename
        if not path.is_file():
            continue
        cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
        codes = frozenset(cmap)
        if allowed is not None:
            codes = codes & allowed
        out.append((path, family, codes))
    if len({family for _, family, _ in out}) < MIN_FAMILIES:
        raise FileNotFoundError(f"Glyphs: need the TrueType fonts that ship with matplotlib in {folder} "
                                f"(DejaVu*, STIXGeneral*); found {[p.name for p, _, _ in out]}")
    return tuple(out)


class _Renderer:
    """Draws glyphs on a square canvas of ``size * _SUPERSAMPLE`` pixels and downsamples."""

    def __init__(self, size: int):
        self.size = size
        self.canvas = size * _SUPERSAMPLE
        self.em = _EM * self.canvas
        self.fonts = [ImageFont.truetype(str(path), size=max(4, round(self.em)),
                                         layout_engine=ImageFont.Layout.BASIC)
                      for path, _, _ in _fonts()]
        self._glyphs: dict[tuple[int, int], tuple[Image.Image, float, float, float] | None] = {}
        self.radius = max(1, round(self.canvas / 84))  # stroke change: 1 px at 3 x 28

    def glyph(self, code: int, font: int) -> tuple[Image.Image, float, float, float] | None:
        """(mask, ox, oy, fit) with mask pixel p at glyph coordinate p + (ox, oy) relative to the em
        centre; ``None`` when the font draws no ink for the character."""
        key = (code, font)
        if key not in self._glyphs:
            self._glyphs[key] = self._draw(code, font)
        return self._glyphs[key]

    def has_ink(self, code: int, font: int) -> bool:
        """Whether the font's outline for the character is non-empty (no rendering needed)."""
        x0, y0, x1, y1 = self.fonts[font].getbbox(chr(code), anchor="ls")
        return x1 > x0 and y1 > y0

    def _draw(self, code: int, font_index: int):
        font = self.fonts[font_index]
        char = chr(code)
        x0, y0, x1, y1 = font.getbbox(char, anchor="ls")
        if x1 <= x0 or y1 <= y0:
            return None
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask).text((-x0, -y0), char, font=font, fill=255, anchor="ls")
        if mask.getbbox() is None:
            return None
        ox = x0 - (x0 + x1) / 2.0
        oy = y0 + _CENTER * self.em
        reach = max((x1 - x0) / 2.0, abs(oy), abs(y1 + _CENTER * self.em))
        fit = min(1.0, _FIT * self.canvas / reach)
        return mask, ox, oy, fit

    def transform(self, code: int, font: int, matrix, shift) -> np.ndarray | None:
        """One drawing at the supersampled size, uint8 [canvas, canvas]:
        ``canvas point = centre + shift + matrix @ fit @ glyph point`` (``matrix`` is 2x2)."""
        glyph = self.glyph(code, font)
        if glyph is None:
            return None
        mask, ox, oy, fit = glyph
        (a, b), (c, d) = matrix
        a, b, c, d = a * fit, b * fit, c * fit, d * fit
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        cx = self.canvas / 2.0 + shift[0]
        cy = self.canvas / 2.0 + shift[1]
        data = (ia, ib, -(ia * cx + ib * cy) - ox, ic, id_, -(ic * cx + id_ * cy) - oy)
        image = mask.transform((self.canvas, self.canvas), Image.Transform.AFFINE, data,
                               resample=Image.Resampling.BILINEAR, fillcolor=0)
        return np.asarray(image, dtype=np.uint8)

    def downsample(self, canvases: np.ndarray) -> np.ndarray:
        """Box-average ``[N, canvas, canvas]`` uint8 to ``[N, size, size]`` uint8 (rounded half up).
        Plain NumPy slices: exact integers, and fast on a busy machine (no thread pool)."""
        n, f, s = canvases.shape[0], _SUPERSAMPLE, self.size
        blocks = canvases.reshape(n, s, f, s, f).astype(np.uint16)
        rows = sum(blocks[:, :, i] for i in range(f))                 # [n, s, s, f]
        total = sum(rows[..., j] for j in range(f))                   # [n, s, s]
        return ((total + (f * f) // 2) // (f * f)).astype(np.uint8)

    def draw(self, code: int, font: int) -> np.ndarray | None:
        """The canonical (undistorted) drawing, uint8 [size, size]."""
        canvas = self.transform(code, font, ((1.0, 0.0), (0.0, 1.0)), (0.0, 0.0))
        return None if canvas is None else self.downsample(canvas[None])[0]


def _morph(canvases: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Dilation (``grow``) or erosion of ``[N, H, W]`` images by a (2r+1)^2 square, separable."""
    pick = np.maximum if grow else np.minimum
    out = canvases
    for axis in (1, 2):
        result = out.copy()
        for step in range(1, radius + 1):
            lead = [slice(None)] * 3
            lag = [slice(None)] * 3
            lead[axis], lag[axis] = slice(step, None), slice(None, -step)
            pick(result[tuple(lead)], out[tuple(lag)], out=result[tuple(lead)])
            pick(result[tuple(lag)], out[tuple(lead)], out=result[tuple(lag)])
        out = result
    return out


# -------------------------------------------------------------------------------------- selection


def _blur(image: np.ndarray) -> np.ndarray:
    """3x3 box blur with zero padding (same size)."""
    padded = np.pad(image, 1)
    h, w = image.shape
    return sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
