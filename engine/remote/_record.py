"""The small local record kept per target: what the engine knows that the server does not say.

    {"lineage": "...", "serial": 3, "host": "https://...",
     "endpoints": {"chat": {"stack": "team-a",
                            "applied": {...canonical doc, secrets as keyed hashes...},
                            "write_only": {"config.served_entities[a]...": "<hmac>"},
                            "observed": {...}, "observed_at_ms": 0}}}

* `stack`: the endpoint was made (or imported) by the engine for that stack; an endpoint not
  listed here is never changed or deleted without `engine import --target`.
* `write_only`: an HMAC per write-only field (`*_plaintext`, `budget_policy_id`, the legacy
  `rate_limits`) that the server never returns, so a plan can tell "unchanged" from "changed"
  without the value. Keyed with a per-target key file (0600) kept beside the record: a leaked
  record cannot be brute-forced offline for short secrets. Never a value.
* `applied`: the canonical document last applied (secrets only as keyed hashes): what drift is
  measured from. `observed`: what `engine refresh --target` last read back, if it differed.

Why a local record and not the platform's tags: tags are shown to everyone who can read the
endpoint and copied into billing logs, a user's own tag diff would carry ours, and a tag hash of
a short key could be guessed offline without a key that only this record holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TargetRecord", "EndpointEntry", "RecordError"]

_FORMAT = 1
# How long a command waits for another engine command on the same record to finish.
LOCK_WAIT_S = 60.0


class RecordError(Exception):
    pass


@dataclass
class EndpointEntry:
    stack: str
    applied: dict[str, Any] | None = None
    write_only: dict[str, str] = field(default_factory=dict)
    observed: dict[str, Any] | None = None
    observed_at_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stack": self.stack, "write_only": self.write_only}
        if self.applied is not None:
            out["applied"] = self.applied
        if self.observed is not None:
            out["observed"] = self.observed
            out["observed_at_ms"] = self.observed_at_ms
        return out


@dataclass
class TargetRecord:
    path: Path
    host: str
    lineage: str
    serial: int = 0
    endpoints: dict[str, EndpointEntry] = field(default_factory=dict)
    _key: bytes = b""
    _lock_fd: int | None = None

    @classmethod
    def open(cls, directory: Path, key: str, host: str) -> TargetRecord:
        """The record of one target (a new, empty one when there is none yet), held under an
        exclusive file lock until `close`: two commands on one target never lose each
        other's writes."""
        path = directory / f"{key}.json"
        record = cls(path, host, lineage=str(uuid.uuid4()))
        record._lock_fd = _lock(path.with_suffix(".lock"))
        try:
            record._load()
        except BaseException:
            record.close()
            raise
        return record

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        path, record = self.path, self
        if path.exists():
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
                if body.get("format") != _FORMAT:
                    raise RecordError(f"{path}: record format {body.get('format')} unknown")
                record.lineage = str(body["lineage"])
                record.serial = int(body["serial"])
                record.endpoints = {
                    name: EndpointEntry(
                        stack=str(e["stack"]),
                        applied=e.get("applied"),
                        write_only=dict(e.get("write_only") or {}),
                        observed=e.get("observed"),
                        observed_at_ms=e.get("observed_at_ms"),
                    )
                    for name, e in body["endpoints"].items()
                }
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordError(f"{path}: damaged target record ({exc})") from None
        record._key = _key_file(path.with_suffix(".key"))

    def digest(self, value: str) -> str:
        """Keyed hash of a secret value, as the canonical document's `$sensitive` marker."""
        return "hmac-sha256:" + hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def hash_value(self, value: Any) -> str:
        """Keyed hash of any JSON value (a write-only field as applied)."""
        return self.digest(json.dumps(value, sort_keys=True, separators=(",", ":")))

    def save(self) -> None:
        self.serial += 1
        body = {
            "format": _FORMAT,
            "host": self.host,
            "lineage": self.lineage,
            "serial": self.serial,
            "endpoints": {n: e.to_json() for n, e in sorted(self.endpoints.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # whole or not at all


def _lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RecordError(
                    f"another engine command is using {path.with_suffix('.json')}; "
                    "retry when it finishes"
                ) from None
            time.sleep(0.1)


def _key_file(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key
