"""Parse YAML (or JSON) into plain Python values plus a map from field path to line number.

PyYAML's composer gives nodes with positions; constructing the values ourselves keeps the
position of every key so that a diagnostic can say `file:line path`. Duplicate keys are an
error (YAML would silently keep the last one), aliases are bounded (no billion laughs) and
`<<` merge keys work as in YAML 1.1.

A scalar whose construction fails (`2024-02-30`, `!!int abc`, `!!bool maybe`, an integer longer
than Python's int-string limit), as a value or as a key, is recorded in
`ParsedDocument.invalid` and building goes on, so one bad value costs one diagnostic, not the
whole report. The message never repeats the value: it may be a pasted secret.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from schemas import Path

__all__ = ["ParsedDocument", "YamlSourceError", "parse_documents"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_MAX_NODES = 2_000_000
_MAX_DEPTH = 200
_TAG_PREFIX = "tag:yaml.org,2002:"
# What PyYAML's scalar constructors raise on a value their tag cannot hold: int("abc"),
# the bool table's KeyError, date(2024, 2, 30), a timestamp regex that did not match, ...
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, OverflowError)


class YamlSourceError(Exception):
    """The text is not valid YAML, or uses a construct a spec cannot hold."""

    def __init__(self, message: str, line: int | None, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path


@dataclass
class ParsedDocument:
    value: Any
    line: int
    lines: dict[Path, int] = field(default_factory=dict)
    # Problems that do not stop parsing (duplicate keys); (message, line, path).
    problems: list[tuple[str, int, Path]] = field(default_factory=list)
    # Scalars that could not be constructed (the value is left out); (message, line, path).
    invalid: list[tuple[str, int, Path]] = field(default_factory=list)

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that exists."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return self.line


def parse_documents(text: str) -> Iterator[ParsedDocument]:
    """Yield each document of a (multi-document) YAML stream."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            builder = _Builder(loader)
            doc = ParsedDocument(value=None, line=node.start_mark.line + 1)
            doc.value = builder.build(node, (), doc)
            yield doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlSourceError(f"invalid YAML: {problem}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"invalid YAML: {exc}", None) from None
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._count = 0

    def build(self, node: yaml.Node, path: Path, doc: ParsedDocument, depth: int = 0) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise YamlSourceError("document is too large (alias expansion?)", _line(node), path)
        if depth > _MAX_DEPTH:
            raise YamlSourceError("document is nested too deeply", _line(node), path)
        doc.lines.setdefault(path, _line(node))
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            raise YamlSourceError(f"unsupported YAML tag {node.tag}", _line(node), path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, doc, depth)
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, path + (i,), doc, depth + 1) for i, item in enumerate(node.value)
            ]
        try:
            return self._loader.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            doc.invalid.append((_construct_problem(node, exc), _line(node), path))
            return None

    def _mapping(
        self, node: yaml.MappingNode, path: Path, doc: ParsedDocument, depth: int
    ) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_sources(value_node, path, doc, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSourceError("a mapping key must be a plain value", _line(key_node), path)
            try:
                key = self._loader.construct_object(key_node, deep=True)
            except _CONSTRUCT_ERRORS as exc:
                problem = f"invalid mapping key: {_construct_problem(key_node, exc)}"
                doc.invalid.append((problem, _line(key_node), path))
                continue
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                key = str(key)
            if key in out:
                doc.problems.append(
                    (
                        f"duplicate key `{key}` (YAML would keep only the last)",
                        _line(key_node),
                        path + (key,),
                    )
                )
            doc.lines[path + (key,)] = _line(key_node)
            out[key] = self.build(value_node, path + (key,), doc, depth + 1)
        for key, value in merged.items():
            out.setdefault(key, value)
        return out

    def _merge_sources(
        self, node: yaml.Node, path: Path, doc: ParsedDocument, depth: int
    ) -> dict[Any, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[Any, Any] = {}
        for source in reversed(sources):
            value = self.build(source, path, doc, depth + 1)
            if not isinstance(value, dict):
                raise YamlSourceError("`<<` must merge a mapping", _line(source), path)
            merged.update(value)
        return merged


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _construct_problem(node: yaml.ScalarNode, exc: Exception) -> str:
    """Why the scalar cannot be read, without repeating it; a hint when quoting would help."""
    tag = node.tag.removeprefix(_TAG_PREFIX)
    explicit = node.tag != _implicit_tag(node)
    quote = "" if explicit else "; quote it to keep it as text"
    if tag == "int":
        digits = sum(c.isdigit() for c in node.value)
        limit = sys.get_int_max_str_digits()
        if limit and digits > limit:
            return f"an integer of {digits} digits is too long (at most {limit}){quote}"
        return "not a valid integer (`!!int`)"
    if tag == "float":
        return "not a valid number (`!!float`)"
    if tag == "bool":
        return "not a valid boolean (`!!bool`): use true or false"
    if tag == "timestamp":
        # datetime's own messages ("day is out of range for month") name no input.
        detail = f": {exc}" if isinstance(exc, ValueError) else ""
        return f"not a valid date or timestamp{detail}{quote}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        return f"invalid value: {exc.problem.split(chr(10))[0]}"
    return f"cannot construct a `!!{tag}` value ({type(exc).__name__})"


def _implicit_tag(node: yaml.ScalarNode) -> str:
    """The tag YAML would give this scalar without an explicit one (plain scalars only)."""
    if node.style:
        return f"{_TAG_PREFIX}str"
    return yaml.resolver.Resolver().resolve(yaml.ScalarNode, node.value, (True, False))
