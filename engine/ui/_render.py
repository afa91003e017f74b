"""Templates and static files of the Serving UI, both shipped inside the package."""

from __future__ import annotations

import datetime
import mimetypes
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["render", "static_file"]

_HERE = Path(__file__).resolve().parent
_STATIC = _HERE / "static"


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["pct"] = lambda v: f"{v:g}%"
    return env


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    at = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


@cache
def _static_index() -> dict[str, Path]:
    """Every shipped static file by its path under static/: nothing else is ever served."""
    return {p.relative_to(_STATIC).as_posix(): p for p in _STATIC.rglob("*") if p.is_file()}


def static_file(name: str) -> tuple[bytes, str] | None:
    path = _static_index().get(name)
    if path is None:
        return None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix in (".LICENSE", ""):
        kind = "text/plain"
    return path.read_bytes(), kind + ("; charset=utf-8" if kind.startswith("text/") else "")
