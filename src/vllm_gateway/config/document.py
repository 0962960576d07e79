"""The configuration file: read as UTF-8 text, parsed stricter than ``yaml.safe_load``.

A key written twice in one mapping is an error here: plain PyYAML keeps the
last one silently, which would merge two models of the same name into one.
Parse failures come back as ValueError with the line and column in the text.
"""

from __future__ import annotations

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from .errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (merge keys ``<<`` still work)."""


def _construct_mapping(loader: _StrictLoader, node: Node) -> dict[object, object]:
    if isinstance(node, MappingNode):
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Keys brought in by `<<: *anchor` may legitimately be overridden.
            if key_node.tag == _MERGE_TAG:
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable; construct_mapping reports it with its position
            if duplicate:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _describe(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or "invalid YAML"
        context = f" ({error.context})" if error.context else ""
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}{context}"
    return "invalid YAML: " + " ".join(str(error).split())


def parse_yaml(text: str) -> object:
    """The document in ``text``; None for an empty one (or one of only comments)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        raise ValueError(_describe(error)) from None
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply") from None


def read_text(label: str) -> str:
    """The file's text; a ConfigError naming the file when it cannot be read."""
    try:
        with open(label, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError([f"{label}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a directory, not a file"]) from None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ConfigError([f"{label}: cannot read ({reason})"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{label}: not UTF-8 text (byte {error.start})"]) from None
