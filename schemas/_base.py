"""The base class of every spec model.

Extra policy: ``extra="forbid"``. A misspelled key is an error with a "did you mean" hint
(see ``schemas._pydantic_errors``), never silently dropped the way an ``extra="ignore"``
gateway config would drop it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["SpecModel"]


class SpecModel(BaseModel):
    """A piece of a desired-state endpoint document (a create body of the serving API)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=False,
    )
