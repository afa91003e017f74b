"""Where the state lives: a SQLite file (the embedded default) or a PostgreSQL database.

| `--state` / `$ENGINE_STATE`          | store      | `local_dir` (runner folders, logs, caches)   |
|--------------------------------------|------------|----------------------------------------------|
| (none)                               | SQLite     | `./.engine`                                  |
| `path/to/state.db`                   | SQLite     | `path/to`: beside the file, as always        |
| `postgresql://user@host:5432/db`     | PostgreSQL | `$ENGINE_HOME`, else `./.engine`             |

What several serving hosts must share lives in the database when it is PostgreSQL (the state,
the secret store's encrypted rows, usage records); what belongs to one machine (its runner
processes' folders and logs, the secrets key file when `ENGINE_SECRETS_KEY` is not set, model
caches) lives in `local_dir`. The local folder is fixed when the location is resolved, so a
later `chdir` cannot move it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HOME_ENV_VAR", "STATE_ENV_VAR", "StateLocation", "resolve_state"]

STATE_ENV_VAR = "ENGINE_STATE"
HOME_ENV_VAR = "ENGINE_HOME"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class StateLocation:
    """A resolved state: `url` is the SQLite file's path as given, or a PostgreSQL URL."""

    url: str
    local_dir: Path

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(_POSTGRES_SCHEMES)

    @property
    def path(self) -> Path:
        """The SQLite file (only for a SQLite state)."""
        if self.is_postgres:
            raise ValueError("a PostgreSQL state has no file")
        return Path(self.url)

    def absolute(self) -> StateLocation:
        """The same state with an absolute file path (PostgreSQL's is already)."""
        if self.is_postgres:
            return self
        path = self.path.absolute()
        return StateLocation(str(path), path.parent)

    def __str__(self) -> str:
        from engine.state._pgconn import mask_url  # psycopg only when PostgreSQL is used

        return mask_url(self.url) if self.is_postgres else self.url

    def __repr__(self) -> str:
        # Never a password in a repr (logs, tracebacks).
        return f"StateLocation({str(self)!r})"


def _local_home() -> Path:
    home = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(home).absolute() if home else Path.cwd() / ".engine"


def resolve_state(state: str | os.PathLike[str] | StateLocation | None = None) -> StateLocation:
    """`--state`, else `$ENGINE_STATE`, else `.engine/state.db` under the working directory."""
    if isinstance(state, StateLocation):
        return state
    if state is None or str(state).strip() == "":
        state = os.environ.get(STATE_ENV_VAR, "").strip() or None
    if state is None:
        path = Path.cwd() / ".engine" / "state.db"
        return StateLocation(str(path), path.parent)
    text = os.fspath(state)
    if text.startswith(_POSTGRES_SCHEMES):
        return StateLocation(text, _local_home())
    path = Path(text)
    return StateLocation(str(path), path.parent)
