"""A checksum of a checkpoint's content, not of its file: SHA-256 over a canonical walk of the nested dicts,
lists, tuples, tensors and plain values a checkpoint may hold (:func:`~.checkpoint.save_checkpoint`'s
vocabulary).

The walk feeds each value's type, shape and bytes in order, so the same content gives the same digest however
``torch.save`` lays it out, and one flipped bit in any weight, optimizer moment, RNG state or number changes it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["content_sha256"]


def content_sha256(value: Any) -> str:
    """The hex SHA-256 of ``value``'s content (see the module docstring)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())  # the raw bytes, without a copy
    elif isinstance(value, (dict, OrderedDict)):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, torch.Size):  # a tuple subclass: before tuples
        digest.update(f"Z{tuple(value)}".encode())
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bool):  # an int subclass: before ints
        digest.update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        digest.update(f"I{value};".encode())
    elif isinstance(value, float):
        digest.update(f"F{value.hex()};".encode())
    elif isinstance(value, complex):
        digest.update(f"C{value.real.hex()},{value.imag.hex()};".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)}:".encode() + data)
    elif isinstance(value, bytes):
        digest.update(f"Y{len(value)}:".encode() + value)
    elif value is None:
        digest.update(b"N")
    elif isinstance(value, (torch.dtype, torch.device)):
        digest.update(f"P{value};".encode())
    else:
        raise TypeError(f"content_sha256: cannot hash a {type(value).__name__}")
