"""Diagnostics: the return channel of every check.

A diagnostic is path-addressed (a tuple of keys and indexes into the endpoint document); the
loader maps that path to a file and line later. Rules never raise for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from ._rule_ids import RuleId

__all__ = ["Diagnostic", "Path", "Severity", "format_path"]

Path = tuple[str | int, ...]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a spec.

    `rule` is a stable id (``RuleId``): one of reference/validation_rules.md (``E3``, ``T3``...)
    or the engine's own (``S1`` wrong type, ``S2`` unknown field, ``F1`` unreadable file, ...).
    """

    rule: RuleId
    message: str
    path: Path = ()
    severity: Severity = Severity.ERROR
    file: str | None = None
    line: int | None = None
    endpoint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def located(self, *, file: str | None, line: int | None, prefix: Path = ()) -> Diagnostic:
        return replace(self, file=file, line=line, path=prefix + self.path)

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "file": self.file,
            "line": self.line,
            "path": format_path(self.path),
            "message": self.message,
        }

    def render(self) -> str:
        """`error: examples/chat.yaml:12 config.served_entities[1].name: ... [N3]`"""
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        path = format_path(self.path)
        location = f"{where} {path}" if path else where
        return f"{self.severity.value}: {location}: {self.message} [{self.rule}]"


def format_path(path: Sequence[str | int]) -> str:
    """('config', 'served_entities', 1, 'name') -> 'config.served_entities[1].name'"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
