"""Encrypted-at-rest secret store behind ``{{secrets/<scope>/<key>}}`` references.

Endpoint specs never carry secret values; they reference them, and ``*_plaintext``
values are moved in here at apply time. Values are encrypted with Fernet under a
master key that lives outside the database (``ENGINE_SECRETS_KEY`` or a 0600 key
file), so a copied ``secrets.db`` alone reveals only scope and key names.

Beside a SQLite state the rows live in ``secrets.db``; with a PostgreSQL state they live in
that database (schema ``engine_secrets``, the same tables), so every serving host shares them.
The master key never goes into a database: replicas on several machines share it through
``ENGINE_SECRETS_KEY`` (or copies of one key file), and the key check pinned in the rows
refuses a replica with another key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.state import StateLocation, create_private_file, resolve_state
from schemas import (
    SECRET_NAME,
    SECRET_REFERENCE,
    SECRET_REFERENCE_FORM,
    now_ms,
    parse_secret_reference,
)

__all__ = [
    "DIGEST_PREFIX",
    "INTERNAL_ERROR",
    "INVALID_PARAMETER_VALUE",
    "KEY_ENV_VAR",
    "KEY_FILE_NAME",
    "MAX_VALUE_BYTES",
    "NAME_PATTERN",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "SECRETS_DB_NAME",
    "SECRET_REFERENCE_PATTERN",
    "ErrorCode",
    "ScopeInfo",
    "SecretInfo",
    "SecretStore",
    "SecretStoreError",
    "parse_secret_reference",
    "secret_store_for_state",
]

KEY_ENV_VAR: Final = "ENGINE_SECRETS_KEY"
SECRETS_DB_NAME: Final = "secrets.db"
KEY_FILE_NAME: Final = "secrets.key"
DIGEST_PREFIX: Final = "hmac-sha256:"
# Same cap as Databricks secrets; keeps one bad pipe from bloating the store.
MAX_VALUE_BYTES: Final = 128 * 1024

# Scope and key names, and the reference syntax, are schemas' (every layer reads them).
NAME_PATTERN: Final = SECRET_NAME
SECRET_REFERENCE_PATTERN: Final = SECRET_REFERENCE

ErrorCode = Literal[
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_PARAMETER_VALUE",
    "INTERNAL_ERROR",
]
RESOURCE_DOES_NOT_EXIST: Final = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS: Final = "RESOURCE_ALREADY_EXISTS"
INVALID_PARAMETER_VALUE: Final = "INVALID_PARAMETER_VALUE"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"

_HTTP_STATUS: Final[dict[str, int]] = {
    RESOURCE_DOES_NOT_EXIST: 404,
    RESOURCE_ALREADY_EXISTS: 409,
    INVALID_PARAMETER_VALUE: 400,
    INTERNAL_ERROR: 500,
}

# HKDF "info" labels give each use of the master key its own independent subkey.
_DIGEST_INFO: Final = b"serving-engine/secrets/digest/v1"
_KEY_CHECK_INFO: Final = b"serving-engine/secrets/key-check/v1"
_WRONG_KEY_HINT: Final = "wrong ENGINE_SECRETS_KEY or key file?"
_SCHEMA_VERSION: Final = "1"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scopes (
    name              TEXT PRIMARY KEY,
    created_timestamp INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    scope                  TEXT NOT NULL REFERENCES scopes(name) ON DELETE CASCADE,
    key                    TEXT NOT NULL,
    ciphertext             BLOB NOT NULL,
    last_updated_timestamp INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
"""


class SecretStoreError(Exception):
    """A store failure with a Databricks-style error code; never carries a secret value."""

    def __init__(self, error_code: ErrorCode, message: str) -> None:
        if error_code not in _HTTP_STATUS:
            raise ValueError(f"unknown error code {error_code!r}")
        super().__init__(message)
        self.error_code: ErrorCode = error_code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.error_code]

    def to_json(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


@dataclass(frozen=True)
class ScopeInfo:
    name: str
    backend_type: str = "DATABRICKS"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "backend_type": self.backend_type}


@dataclass(frozen=True)
class SecretInfo:
    """Metadata only: a listing must never be able to leak a value."""

    key: str
    last_updated_timestamp: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "last_updated_timestamp": self.last_updated_timestamp}


@dataclass(frozen=True)
class _Keys:
    fernet: Fernet
    digest_key: bytes


def secret_store_for_state(state: Path | str | StateLocation) -> SecretStore:
    """The store of a state: ``<state dir>/secrets.db`` beside a SQLite file; in the database
    itself for PostgreSQL (its key file, if any, in the location's local folder)."""
    location = resolve_state(state)
    if location.is_postgres:
        return SecretStore.on_postgres(location.url, key_path=location.local_dir / KEY_FILE_NAME)
    return SecretStore(location.path.parent / SECRETS_DB_NAME)


def _now_ms() -> int:
    return now_ms()


def _validate_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise SecretStoreError(INVALID_PARAMETER_VALUE, f"{kind} name must be a string")
    if NAME_PATTERN.fullmatch(name) is None:
        # repr() keeps control characters in a bad name from garbling terminals and logs.
        shown = repr(name) if len(name) <= 200 else f"of {len(name)} characters"
        raise SecretStoreError(
            INVALID_PARAMETER_VALUE,
            f"{kind} name {shown} is invalid: use 1-128 characters from A-Z a-z 0-9 _ . -",
        )
    return name


def _encode_value(value: object) -> bytes:
    if not isinstance(value, str):
        raise SecretStoreError(INVALID_PARAMETER_VALUE, "secret value must be a string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise SecretStoreError(
            INVALID_PARAMETER_VALUE, "secret value is not encodable as UTF-8"
        ) from None
    return raw


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class SecretStore:
    """Scopes and encrypted secrets in one SQLite file; safe to share across threads."""

    def __init__(
        self, db_path: Path, *, key_path: Path | None = None, _postgres_url: str | None = None
    ) -> None:
        self._db_path = Path(db_path)
        self._key_path = (
            Path(key_path) if key_path is not None else self._db_path.parent / KEY_FILE_NAME
        )
        # One connection guarded by a re-entrant lock: simple and enough for a web server.
        self._lock = threading.RLock()
        self._keys: _Keys | None = None
        self._errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        self._where = str(self._db_path)
        self._conn: Any = self._open() if _postgres_url is None else self._open_pg(_postgres_url)

    @classmethod
    def on_postgres(cls, url: str, *, key_path: Path) -> SecretStore:
        """The store's rows in a PostgreSQL database (schema ``engine_secrets``)."""
        return cls(key_path.parent / SECRETS_DB_NAME, key_path=key_path, _postgres_url=url)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self._db_path

    @property
    def key_path(self) -> Path:
        return self._key_path

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                # A PostgreSQL store's QmarkConnection closes through its PgConnection.
                getattr(self._conn, "pg", self._conn).close()
                self._conn = None

    def __enter__(self) -> SecretStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> sqlite3.Connection:
        try:
            # 0600 before SQLite opens it, which then gives its -wal/-shm files the same mode.
            create_private_file(self._db_path)
            conn = sqlite3.connect(
                str(self._db_path),
                timeout=10.0,
                isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise SecretStoreError(
                INTERNAL_ERROR, f"cannot open secret store {self._db_path}: {exc}"
            ) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Zero freed pages so deleted ciphertexts do not linger in the file.
            conn.execute("PRAGMA secure_delete=ON")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            self._check_version(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise SecretStoreError(
                INTERNAL_ERROR, f"cannot open secret store {self._db_path}: {exc}"
            ) from exc
        except SecretStoreError:
            conn.close()
            raise
        return conn

    def _open_pg(self, url: str) -> Any:
        # Imported here: psycopg only for those who use PostgreSQL.
        import psycopg

        from engine.state._pgconn import PgConnection, QmarkConnection, mask_url, pg_ddl

        self._errors = (sqlite3.Error, psycopg.Error)
        self._where = f"{mask_url(url)} (schema engine_secrets)"
        pg = PgConnection(url, schema="engine_secrets")
        conn = QmarkConnection(pg)
        try:
            with pg.mutex:
                # The same tables as secrets.db; the first opener creates them.
                conn.execute("BEGIN IMMEDIATE")
                for statement in pg_ddl(_SCHEMA).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                self._check_version(conn)
        except psycopg.Error as exc:
            pg.close()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
            raise SecretStoreError(
                INTERNAL_ERROR, f"cannot open secret store {self._where}: {detail}"
            ) from None
        except SecretStoreError:
            pg.close()
            raise
        return conn

    def _check_version(self, conn: Any) -> None:
        """Inside the opening transaction: record or check the schema version, commit."""
        conn.execute(
            "INSERT INTO meta(name, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            (_SCHEMA_VERSION,),
        )
        (version,) = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        conn.execute("COMMIT")
        if version != _SCHEMA_VERSION:
            raise SecretStoreError(
                INTERNAL_ERROR,
                f"secret store {self._where} has schema version {version}; "
                f"this engine understands {_SCHEMA_VERSION}",
            )

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """Serialise access and turn database errors into SecretStoreError."""
        with self._lock:
            if self._conn is None:
                raise SecretStoreError(INTERNAL_ERROR, "secret store is closed")
            try:
                yield self._conn
            except self._errors as exc:
                raise SecretStoreError(
                    INTERNAL_ERROR, f"secret store database error: {exc}"
                ) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so check-then-write is atomic
        # across processes (CLI and server sharing one file).
        with self._guard() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- keys --------------------------------------------------------------------

    def _key_material(self) -> tuple[bytes, str]:
        """The master key (Fernet encoding) and a description of where it came from."""
        env = os.environ.get(KEY_ENV_VAR, "").strip()
        if env:
            return env.encode("utf-8"), KEY_ENV_VAR
        source = f"key file {self._key_path}"
        key = self._read_key_file()
        if key is not None:
            return key, source
        # A fresh key for a store that already holds secrets could never decrypt them;
        # refuse rather than quietly minting one.
        with self._guard() as conn:
            row = conn.execute("SELECT 1 FROM meta WHERE name = 'key_check'").fetchone()
        if row is not None:
            raise SecretStoreError(
                INTERNAL_ERROR,
                f"key file {self._key_path} is missing but {self._where} was written with a "
                f"key; restore the key file or set {KEY_ENV_VAR}",
            )
        return self._create_key_file(), source

    def _read_key_file(self) -> bytes | None:
        # A concurrent creator may not have written its key yet: retry an empty file briefly.
        for _ in range(50):
            try:
                data = self._key_path.read_bytes().strip()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise SecretStoreError(
                    INTERNAL_ERROR, f"cannot read key file {self._key_path}: {exc.strerror}"
                ) from exc
            if data:
                return data
            time.sleep(0.02)
        raise SecretStoreError(INTERNAL_ERROR, f"key file {self._key_path} is empty")

    def _create_key_file(self) -> bytes:
        key = Fernet.generate_key()
        try:
            self._key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            # Another process won the race; everyone must share its key.
            existing = self._read_key_file()
            if existing is None:
                raise SecretStoreError(
                    INTERNAL_ERROR, f"key file {self._key_path} vanished while being created"
                ) from None
            return existing
        except OSError as exc:
            raise SecretStoreError(
                INTERNAL_ERROR, f"cannot create key file {self._key_path}: {exc.strerror}"
            ) from exc
        with os.fdopen(fd, "wb") as handle:
            handle.write(key + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return key

    def _get_keys(self) -> _Keys:
        with self._lock:
            if self._keys is not None:
                return self._keys
            material, source = self._key_material()
            try:
                fernet = Fernet(material)
                master = base64.urlsafe_b64decode(material)
            except (ValueError, TypeError, binascii.Error):
                # Never echo the material itself: it is the key.
                raise SecretStoreError(
                    INVALID_PARAMETER_VALUE,
                    f"{source} does not hold a valid key: expected the urlsafe base64 "
                    "encoding of 32 bytes (as made by Fernet.generate_key())",
                ) from None
            self._verify_key(master, source)
            self._keys = _Keys(fernet=fernet, digest_key=_hkdf(master, _DIGEST_INFO))
            return self._keys

    def _verify_key(self, master: bytes, source: str) -> None:
        """Pin the store to the first key used, via an HMAC fingerprint (reveals nothing).

        This catches a wrong key up front, before it could write secrets that no other
        key can read.
        """
        check = hmac.new(
            _hkdf(master, _KEY_CHECK_INFO), b"serving-engine secret store", hashlib.sha256
        ).hexdigest()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta(name, value) VALUES ('key_check', ?) ON CONFLICT DO NOTHING",
                (check,),
            )
            (stored,) = conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if not hmac.compare_digest(str(stored), check):
            raise SecretStoreError(
                INTERNAL_ERROR,
                f"cannot decrypt secrets in {self._where}: {_WRONG_KEY_HINT} "
                f"(the key from {source} is not the one this store was written with)",
            )

    def _encrypt(self, scope: str, key: str, value: str) -> bytes:
        # Scope and key ride inside the ciphertext so a row swapped for another is detected.
        payload = json.dumps(
            {"scope": scope, "key": key, "value": value},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return self._get_keys().fernet.encrypt(payload.encode("utf-8"))

    def _decrypt(self, scope: str, key: str, token: object) -> str:
        fernet = self._get_keys().fernet
        try:
            payload = fernet.decrypt(token)  # type: ignore[arg-type]
        except (InvalidToken, TypeError, ValueError):
            # `from None`: callers get our message, not cryptography's internals.
            raise SecretStoreError(
                INTERNAL_ERROR,
                f"cannot decrypt secret '{key}' in scope '{scope}': {_WRONG_KEY_HINT}",
            ) from None
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if (
            not isinstance(data, dict)
            or data.get("scope") != scope
            or data.get("key") != key
            or not isinstance(data.get("value"), str)
        ):
            raise SecretStoreError(
                INTERNAL_ERROR,
                f"stored ciphertext for secret '{key}' in scope '{scope}' does not belong to it; "
                "the secret store may have been tampered with",
            )
        return data["value"]

    # -- scopes ------------------------------------------------------------------

    def create_scope(self, scope: str) -> None:
        _validate_name("scope", scope)
        with self._transaction() as conn:
            if self._scope_row(conn, scope):
                raise SecretStoreError(
                    RESOURCE_ALREADY_EXISTS, f"secret scope '{scope}' already exists"
                )
            conn.execute(
                "INSERT INTO scopes(name, created_timestamp) VALUES (?, ?)", (scope, _now_ms())
            )

    def delete_scope(self, scope: str) -> None:
        """Delete a scope together with all of its secrets."""
        _validate_name("scope", scope)
        with self._transaction() as conn:
            self._require_scope(conn, scope)
            # Explicit rather than relying on the foreign_keys pragma being on.
            conn.execute("DELETE FROM secrets WHERE scope = ?", (scope,))
            conn.execute("DELETE FROM scopes WHERE name = ?", (scope,))

    def list_scopes(self) -> list[ScopeInfo]:
        with self._guard() as conn:
            rows = conn.execute("SELECT name FROM scopes ORDER BY name").fetchall()
        return [ScopeInfo(name=name) for (name,) in rows]

    def has_scope(self, scope: str) -> bool:
        _validate_name("scope", scope)
        with self._guard() as conn:
            return self._scope_row(conn, scope)

    @staticmethod
    def _scope_row(conn: sqlite3.Connection, scope: str) -> bool:
        return conn.execute("SELECT 1 FROM scopes WHERE name = ?", (scope,)).fetchone() is not None

    def _require_scope(self, conn: sqlite3.Connection, scope: str) -> None:
        if not self._scope_row(conn, scope):
            raise SecretStoreError(
                RESOURCE_DOES_NOT_EXIST, f"secret scope '{scope}' does not exist"
            )

    # -- secrets -----------------------------------------------------------------

    def put_secret(self, scope: str, key: str, value: str) -> None:
        """Create or overwrite ``scope/key``; the scope must already exist."""
        _validate_name("scope", scope)
        _validate_name("key", key)
        if len(_encode_value(value)) > MAX_VALUE_BYTES:
            raise SecretStoreError(
                INVALID_PARAMETER_VALUE,
                f"secret '{key}' in scope '{scope}' is larger than {MAX_VALUE_BYTES} bytes",
            )
        # Encrypt before taking the write lock; it may also load/verify the key.
        token = self._encrypt(scope, key, value)
        with self._transaction() as conn:
            self._require_scope(conn, scope)
            conn.execute(
                "INSERT INTO secrets(scope, key, ciphertext, last_updated_timestamp) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT(scope, key) DO UPDATE SET "
                "ciphertext = excluded.ciphertext, "
                "last_updated_timestamp = excluded.last_updated_timestamp",
                (scope, key, token, _now_ms()),
            )

    def get_secret(self, scope: str, key: str) -> str:
        _validate_name("scope", scope)
        _validate_name("key", key)
        with self._guard() as conn:
            row = conn.execute(
                "SELECT ciphertext FROM secrets WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            if row is None:
                self._require_scope(conn, scope)
                raise SecretStoreError(
                    RESOURCE_DOES_NOT_EXIST,
                    f"secret '{key}' does not exist in scope '{scope}'",
                )
        return self._decrypt(scope, key, row[0])

    def delete_secret(self, scope: str, key: str) -> None:
        _validate_name("scope", scope)
        _validate_name("key", key)
        with self._transaction() as conn:
            self._require_scope(conn, scope)
            cursor = conn.execute("DELETE FROM secrets WHERE scope = ? AND key = ?", (scope, key))
            if cursor.rowcount == 0:
                raise SecretStoreError(
                    RESOURCE_DOES_NOT_EXIST,
                    f"secret '{key}' does not exist in scope '{scope}'",
                )

    def list_secrets(self, scope: str) -> list[SecretInfo]:
        _validate_name("scope", scope)
        with self._guard() as conn:
            self._require_scope(conn, scope)
            rows = conn.execute(
                "SELECT key, last_updated_timestamp FROM secrets WHERE scope = ? ORDER BY key",
                (scope,),
            ).fetchall()
        return [SecretInfo(key=key, last_updated_timestamp=int(ts)) for key, ts in rows]

    def has(self, scope: str, key: str) -> bool:
        """Whether ``scope/key`` exists (False for a missing scope too); no decryption."""
        _validate_name("scope", scope)
        _validate_name("key", key)
        with self._guard() as conn:
            row = conn.execute(
                "SELECT 1 FROM secrets WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
        return row is not None

    def resolve(self, reference: str) -> str:
        """The value behind a ``{{secrets/<scope>/<key>}}`` reference."""
        parsed = parse_secret_reference(reference)
        if parsed is None:
            # Do not echo the text: it may be a plaintext secret pasted by mistake.
            raise SecretStoreError(
                INVALID_PARAMETER_VALUE,
                f"not a secret reference: expected exactly {SECRET_REFERENCE_FORM}",
            )
        return self.get_secret(*parsed)

    def digest(self, value: str) -> str:
        """Keyed hash of a plaintext, so state can tell if it changed without storing it.

        Keyed (not a bare SHA-256) so a leaked state file cannot be brute-forced offline
        for short secrets without the master key.
        """
        raw = _encode_value(value)
        mac = hmac.new(self._get_keys().digest_key, raw, hashlib.sha256).hexdigest()
        return DIGEST_PREFIX + mac
