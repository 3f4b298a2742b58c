"""Few-shot data sets: every loader returns a :class:`FewShotDataset` (all examples in one tensor,
sorted by class, with CSR offsets) that :class:`~quickstudy.EpisodeSampler` indexes with tensors.

* :class:`Omniglot` — the original archives (local copy, ``$QUICKSTUDY_DATA`` or a checked download).
* :class:`Glyphs` — an embedded Omniglot-like set rendered from matplotlib's fonts (no download).
* :class:`ImageFolder` / :func:`load_images` — your own images.
* :class:`ArrayDataset`, :func:`rotate_classes` — in-memory arrays and rotation class augmentation.

Images are uint8 ``[M, C, H, W]`` with strokes bright (255) on a dark (0) background.
"""

from .base import ArrayDataset, FewShotDataset, rotate_classes
from .folder import IMAGE_EXTENSIONS, ImageFolder, image_files, load_images
from .glyphs import Glyphs, glyph_blocks
from .omniglot import Omniglot, find_omniglot, vinyals_classes
from .paths import cache_dir, data_root

__all__ = [
    "FewShotDataset", "ArrayDataset", "rotate_classes",
    "Omniglot", "find_omniglot", "vinyals_classes",
    "Glyphs", "glyph_blocks",
    "ImageFolder", "load_images", "image_files", "IMAGE_EXTENSIONS",
    "data_root", "cache_dir",
]
