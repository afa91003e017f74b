"""`{{secrets/<scope>/<key>}}`: what a secret reference is, defined once.

Specs never carry secret values; they reference them, and every layer has to agree on what a
reference is: the rules that validate one (X3, E15), the planner that checks it resolves (SEC1),
the executors and the gateway that resolve it, the secret store that parses it. Five copies of
the pattern had drifted (an anchored `^...$` accepted a trailing newline that the store's
`fullmatch` refused, so such a key validated and applied, then failed on the first query).
schemas/ owns it because every other layer may import schemas/.

| helper                              | answers                                                |
|-------------------------------------|--------------------------------------------------------|
| `parse_secret_reference(text)`      | `(scope, key)` when the whole text is one reference    |
| `is_secret_reference(text)`         | whether the whole text is one reference                |
| `format_secret_reference(s, k)`     | the reference to `s/k`                                 |
| `find_secret_references(text)`      | every `(scope, key)` referenced inside a longer text   |
| `replace_secret_references(t, fn)`  | the text with each reference replaced by `fn(ref)`     |
| `looks_like_secret_reference(text)` | the text tries to be one (for "malformed" errors)      |
| `SECRET_REFERENCE_FORM`             | the shape to show in messages                          |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = [
    "MANAGED_SCOPE",
    "MAX_SECRET_NAME_LENGTH",
    "SECRET_NAME",
    "SECRET_REFERENCE",
    "SECRET_REFERENCE_FORM",
    "find_secret_references",
    "format_secret_reference",
    "is_secret_reference",
    "looks_like_secret_reference",
    "parse_secret_reference",
    "replace_secret_references",
]

# The scope where the engine keeps its own copies of `*_plaintext` values: no principal may
# read, write or reference it (the state's ACL migration and the secrets API both skip it).
MANAGED_SCOPE: Final = "engine-managed"

_NAME_CHARS = r"[A-Za-z0-9_.\-]"
# Databricks' limit for scope and key names; the store refuses longer ones.
MAX_SECRET_NAME_LENGTH: Final = 128
# A whole scope or key name (use with fullmatch).
SECRET_NAME: Final = re.compile(f"{_NAME_CHARS}{{1,{MAX_SECRET_NAME_LENGTH}}}")
# Unanchored, groups (scope, key): scans longer texts; whole values go through fullmatch.
SECRET_REFERENCE: Final = re.compile(
    r"\{\{secrets/(" + _NAME_CHARS + r"+)/(" + _NAME_CHARS + r"+)\}\}"
)
SECRET_REFERENCE_FORM: Final = "{{secrets/<scope>/<key>}}"
_PREFIX: Final = "{{secrets/"


def parse_secret_reference(text: object) -> tuple[str, str] | None:
    """`(scope, key)` if the whole of `text` is `{{secrets/<scope>/<key>}}`, else None."""
    if not isinstance(text, str):
        return None
    match = SECRET_REFERENCE.fullmatch(text)
    return None if match is None else (match.group(1), match.group(2))


def is_secret_reference(text: object) -> bool:
    return parse_secret_reference(text) is not None


def format_secret_reference(scope: str, key: str) -> str:
    return f"{{{{secrets/{scope}/{key}}}}}"


def find_secret_references(text: str) -> list[tuple[str, str]]:
    """`(scope, key)` of every reference inside `text`, in order."""
    return [(m.group(1), m.group(2)) for m in SECRET_REFERENCE.finditer(text)]


def replace_secret_references(text: str, replace: Callable[[str], str]) -> str:
    """`text` with every reference `ref` in it replaced by `replace(ref)`."""
    return SECRET_REFERENCE.sub(lambda m: replace(m.group(0)), text)


def looks_like_secret_reference(text: str) -> bool:
    """Whether `text` mentions `{{secrets/` at all: a value that does but is not one whole
    reference is malformed, not a literal."""
    return _PREFIX in text
