"""The one YAML reader of config files: plain data only (``yaml.SafeLoader``), and nothing that would exhaust
the machine or silently mean something else.

* Anchors and aliases (``&a`` / ``*a``) are resolved by PyYAML as shared references, but validating, printing or
  writing a config expands them: a few hundred bytes of nested aliases become gigabytes. The composed document
  is measured first and refused when it expands to more than :data:`MAX_VALUES` values, or refers to itself.
* A key given twice in one mapping is refused naming the key and its line (PyYAML keeps the last silently).
  Merge keys (``<<: *base``) may still be overridden, as YAML intends.
* Nesting too deep for the parser is an error, not a ``RecursionError``.

Every config kind reads through :func:`quickstudy.config.read_raw`, which uses :func:`load`; deciding a run's
kind (:func:`quickstudy.tasks.kinds.kind_of`) reads with it too. This module imports nothing of quickstudy's.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

__all__ = ["MAX_VALUES", "YAMLInputError", "load"]

#: The most values (scalars, lists and mappings, aliases expanded) a config file may hold; real configs hold
#: a few dozen to a few hundred.
MAX_VALUES = 10_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLInputError(ValueError):
    """A YAML text that is not valid, or that :func:`load` refuses; the message names the source."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"line {line}: duplicate key {key!r}")
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_size(root: Node, source: str) -> None:
    """Refuse a document that expands (aliases followed) to more than MAX_VALUES values or contains itself.
    Sizes are memoised per node, so a bomb is measured in time linear in its text, not in its expansion."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(size[id(child)] for child in _children(node))
            if total > MAX_VALUES:
                raise YAMLInputError(
                    f"{source}: its anchors and aliases (&name / *name) expand to more than {MAX_VALUES:,} values; "
                    "a config needs far fewer: write the values out")
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise YAMLInputError(f"{source}: an alias refers to itself (line {node.start_mark.line + 1}): the value "
                                 "would be infinite")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            child_key = id(child)
            if child_key in on_path:
                raise YAMLInputError(f"{source}: an alias refers to itself (line {child.start_mark.line + 1}): "
                                     "the value would be infinite")
            if child_key not in size:
                stack.append((child, False))


def load(text: str, source: str = "config") -> Any:
    """The data of one YAML document (``None`` for an empty one); :class:`YAMLInputError` naming ``source`` for
    invalid YAML, a duplicate key, an alias bomb or a self-referring alias."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except _DuplicateKey as error:
        raise YAMLInputError(f"{source}, line {error.line}: duplicate key {error.key!r}; each key may appear once "
                             "in a mapping") from None
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise YAMLInputError(f"{source}: not valid YAML: {detail}") from None
    except RecursionError:
        raise YAMLInputError(f"{source}: nested too deeply to be a config") from None
    finally:
        loader.dispose()
