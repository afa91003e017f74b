"""Tests for the encrypted secret store and the ``secrets`` CLI, on real SQLite files."""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

import engine.cli.secrets as cli_secrets
import engine.secrets.store as secrets_store
from engine.cli.secrets import secrets_app
from engine.secrets.store import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    KEY_ENV_VAR,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    SECRET_REFERENCE_PATTERN,
    ScopeInfo,
    SecretInfo,
    SecretStore,
    SecretStoreError,
    parse_secret_reference,
    secret_store_for_state,
)

SECRET = "sk-live-Zq8v3XyPlAiNtExT-0123456789abcdef"
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own key or state path must not leak into the tests.
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    monkeypatch.delenv(cli_secrets.STATE_ENV_VAR, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "secrets.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SecretStore]:
    with SecretStore(db_path) as opened:
        yield opened


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _forbidden_encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
    ]


# -- store basics ----------------------------------------------------------------


def test_round_trip(store: SecretStore) -> None:
    store.create_scope("llm")
    store.put_secret("llm", "openai_key", SECRET)
    assert store.get_secret("llm", "openai_key") == SECRET
    assert store.has("llm", "openai_key")
    assert not store.has("llm", "other")
    assert not store.has("no-such-scope", "openai_key")


def test_round_trip_survives_reopen(db_path: Path) -> None:
    with SecretStore(db_path) as first:
        first.create_scope("llm")
        first.put_secret("llm", "k", SECRET)
    with SecretStore(db_path) as second:
        assert second.get_secret("llm", "k") == SECRET


def test_overwrite_replaces_value_and_timestamp(
    store: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_scope("llm")
    monkeypatch.setattr(secrets_store, "_now_ms", lambda: 1_000)
    store.put_secret("llm", "k", "first")
    monkeypatch.setattr(secrets_store, "_now_ms", lambda: 2_000)
    store.put_secret("llm", "k", "second")
    assert store.get_secret("llm", "k") == "second"
    assert store.list_secrets("llm") == [SecretInfo(key="k", last_updated_timestamp=2_000)]


def test_list_secrets_shows_keys_and_timestamps_not_values(store: SecretStore) -> None:
    store.create_scope("llm")
    store.put_secret("llm", "b_key", SECRET)
    store.put_secret("llm", "a_key", SECRET + "-2")
    listed = store.list_secrets("llm")
    assert [s.key for s in listed] == ["a_key", "b_key"]
    for info in listed:
        assert isinstance(info.last_updated_timestamp, int)
        assert info.last_updated_timestamp > 1_600_000_000_000  # milliseconds, not seconds
        assert set(info.to_json()) == {"key", "last_updated_timestamp"}
        assert SECRET not in repr(info)
        assert SECRET not in json.dumps(info.to_json())


def test_list_scopes_json_shape(store: SecretStore) -> None:
    store.create_scope("zeta")
    store.create_scope("alpha")
    assert store.list_scopes() == [ScopeInfo("alpha"), ScopeInfo("zeta")]
    assert {"scopes": [s.to_json() for s in store.list_scopes()]} == {
        "scopes": [
            {"name": "alpha", "backend_type": "DATABRICKS"},
            {"name": "zeta", "backend_type": "DATABRICKS"},
        ]
    }


def test_delete_scope_deletes_its_secrets(store: SecretStore) -> None:
    store.create_scope("llm")
    store.create_scope("keep")
    store.put_secret("llm", "k", SECRET)
    store.put_secret("keep", "k", "kept")
    store.delete_scope("llm")
    assert [s.name for s in store.list_scopes()] == ["keep"]
    store.create_scope("llm")
    assert store.list_secrets("llm") == []
    assert not store.has("llm", "k")
    assert store.get_secret("keep", "k") == "kept"


def test_delete_secret(store: SecretStore) -> None:
    store.create_scope("llm")
    store.put_secret("llm", "k", SECRET)
    store.delete_secret("llm", "k")
    assert not store.has("llm", "k")
    with pytest.raises(SecretStoreError) as info:
        store.delete_secret("llm", "k")
    assert info.value.error_code == RESOURCE_DOES_NOT_EXIST


def test_unicode_and_empty_values_round_trip(store: SecretStore) -> None:
    store.create_scope("s")
    for value in ["", "päss wörd 🔑", "line1\nline2\n", '{"json": true}']:
        store.put_secret("s", "k", value)
        assert store.get_secret("s", "k") == value


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(max_size=300))
def test_any_text_round_trips(store: SecretStore, value: str) -> None:
    if not store.has_scope("prop"):
        store.create_scope("prop")
    store.put_secret("prop", "k", value)
    assert store.get_secret("prop", "k") == value


def test_concurrent_threads_share_one_store(store: SecretStore) -> None:
    store.create_scope("t")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                store.put_secret("t", f"k{n}", f"value-{n}-{i}")
                assert store.get_secret("t", f"k{n}") == f"value-{n}-{i}"
                store.list_secrets("t")
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_secrets("t")) == 8


def test_closed_store_raises_store_error(db_path: Path) -> None:
    opened = SecretStore(db_path)
    opened.close()
    with pytest.raises(SecretStoreError) as info:
        opened.list_scopes()
    assert info.value.error_code == INTERNAL_ERROR


# -- encryption at rest ----------------------------------------------------------


def test_database_and_wal_never_contain_plaintext(store: SecretStore, db_path: Path) -> None:
    store.create_scope("llm")
    old_value = SECRET + "-old"
    store.put_secret("llm", "k", old_value)
    store.put_secret("llm", "k", SECRET)
    store.put_secret("llm", "gone", SECRET + "-deleted")
    store.delete_secret("llm", "gone")

    wal_path = db_path.with_name(db_path.name + "-wal")
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[union-attr]
    assert mode == "wal"
    assert wal_path.exists()  # the writes above still sit in the WAL
    files = [db_path, wal_path]
    for path in files:
        data = path.read_bytes()
        for value in (SECRET, old_value, SECRET + "-deleted"):
            for needle in _forbidden_encodings(value):
                assert needle not in data, f"{path.name} leaks {needle!r}"

    store.close()  # checkpoints the WAL into the main file
    data = db_path.read_bytes()
    for needle in _forbidden_encodings(SECRET):
        assert needle not in data


def test_store_files_are_private(store: SecretStore, db_path: Path) -> None:
    store.create_scope("llm")
    store.put_secret("llm", "k", SECRET)
    key_path = db_path.parent / "secrets.key"
    assert store.key_path == key_path
    assert _mode(key_path) == 0o600
    assert _mode(db_path) == 0o600
    wal_path = db_path.with_name(db_path.name + "-wal")
    if wal_path.exists():
        assert _mode(wal_path) & 0o077 == 0


def test_key_file_created_once_and_reused(db_path: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "master.key"
    with SecretStore(db_path, key_path=key_path) as first:
        assert not key_path.exists()  # created on first use, not on open
        first.create_scope("s")
        first.put_secret("s", "k", SECRET)
    assert _mode(key_path) == 0o600
    key_bytes = key_path.read_bytes()
    Fernet(key_bytes.strip())  # a valid Fernet key
    with SecretStore(db_path, key_path=key_path) as second:
        assert second.get_secret("s", "k") == SECRET
    assert key_path.read_bytes() == key_bytes


def test_env_key_is_used_instead_of_key_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with SecretStore(db_path) as opened:
        opened.create_scope("s")
        opened.put_secret("s", "k", SECRET)
        assert opened.get_secret("s", "k") == SECRET
    assert not (db_path.parent / "secrets.key").exists()
    with SecretStore(db_path) as reopened:
        assert reopened.get_secret("s", "k") == SECRET


def _assert_wrong_key(exc: SecretStoreError) -> None:
    assert exc.error_code == INTERNAL_ERROR
    assert "cannot decrypt" in exc.message
    assert "wrong ENGINE_SECRETS_KEY or key file?" in exc.message
    assert SECRET not in exc.message
    assert "InvalidToken" not in exc.message
    # Raised `from None`: no chained cryptography exception to print.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


def test_wrong_env_key_is_a_clear_error(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with SecretStore(db_path) as opened:
        opened.create_scope("s")
        opened.put_secret("s", "k", SECRET)
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with SecretStore(db_path) as wrong:
        with pytest.raises(SecretStoreError) as info:
            wrong.get_secret("s", "k")
        _assert_wrong_key(info.value)
        # A wrong key must not be able to write secrets nobody can read back either.
        with pytest.raises(SecretStoreError):
            wrong.put_secret("s", "other", "x")
        assert not wrong.has("s", "other")


def test_wrong_key_file_detected_on_decrypt(db_path: Path, tmp_path: Path) -> None:
    with SecretStore(db_path, key_path=tmp_path / "a.key") as opened:
        opened.create_scope("s")
        opened.put_secret("s", "k", SECRET)
    # Drop the key fingerprint so the failure comes from decryption itself.
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM meta WHERE name = 'key_check'")
    conn.close()
    wrong = SecretStore(db_path, key_path=tmp_path / "b.key")
    with wrong, pytest.raises(SecretStoreError) as info:
        wrong.get_secret("s", "k")
    _assert_wrong_key(info.value)
    assert "'k'" in info.value.message and "'s'" in info.value.message


def test_missing_key_file_for_existing_store_is_not_replaced(db_path: Path) -> None:
    with SecretStore(db_path) as opened:
        opened.create_scope("s")
        opened.put_secret("s", "k", SECRET)
    key_path = db_path.parent / "secrets.key"
    key_path.unlink()
    with SecretStore(db_path) as reopened, pytest.raises(SecretStoreError) as info:
        reopened.get_secret("s", "k")
    assert info.value.error_code == INTERNAL_ERROR
    assert "missing" in info.value.message
    assert not key_path.exists()


@pytest.mark.parametrize("bad_key", ["not-a-key", "c2hvcnQ=", base64.b64encode(b"x" * 31).decode()])
def test_malformed_env_key(db_path: Path, monkeypatch: pytest.MonkeyPatch, bad_key: str) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, bad_key)
    with SecretStore(db_path) as opened:
        opened.create_scope("s")
        with pytest.raises(SecretStoreError) as info:
            opened.put_secret("s", "k", SECRET)
    assert info.value.error_code == INVALID_PARAMETER_VALUE
    assert KEY_ENV_VAR in info.value.message
    assert bad_key not in info.value.message


def test_swapped_ciphertext_is_detected(store: SecretStore, db_path: Path) -> None:
    store.create_scope("s")
    store.put_secret("s", "a", "value-a")
    store.put_secret("s", "b", "value-b")
    conn = store._conn
    assert conn is not None
    (token_a,) = conn.execute("SELECT ciphertext FROM secrets WHERE key = 'a'").fetchone()
    conn.execute("UPDATE secrets SET ciphertext = ? WHERE key = 'b'", (token_a,))
    with pytest.raises(SecretStoreError) as info:
        store.get_secret("s", "b")
    assert info.value.error_code == INTERNAL_ERROR
    assert "value-a" not in info.value.message


# -- digest ----------------------------------------------------------------------


def test_digest_is_keyed_and_stable(db_path: Path, tmp_path: Path) -> None:
    with SecretStore(db_path) as first:
        digest = first.digest(SECRET)
        assert digest == first.digest(SECRET)
        assert digest != first.digest(SECRET + "x")
    assert digest.startswith("hmac-sha256:")
    hex_part = digest.removeprefix("hmac-sha256:")
    assert len(hex_part) == 64 and int(hex_part, 16) >= 0
    assert SECRET not in digest
    with SecretStore(db_path) as again:  # same key file, new instance
        assert again.digest(SECRET) == digest
    with SecretStore(tmp_path / "other" / "secrets.db") as other:  # different master key
        assert other.digest(SECRET) != digest


def test_digest_differs_between_env_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with SecretStore(tmp_path / "one" / "secrets.db") as one:
        first = one.digest(SECRET)
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    with SecretStore(tmp_path / "two" / "secrets.db") as two:
        assert two.digest(SECRET) != first


# -- references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{secrets/llm/openai_key}}", ("llm", "openai_key")),
        ("{{secrets/my-scope.v2/KEY_1}}", ("my-scope.v2", "KEY_1")),
        ("{{secrets/a/b}}", ("a", "b")),
    ],
)
def test_parse_valid_references(text: str, expected: tuple[str, str]) -> None:
    assert parse_secret_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain-value",
        "{{secrets/llm}}",
        "{{secrets/llm/key/extra}}",
        "{{secrets//key}}",
        "{{secrets/llm/}}",
        "{{ secrets/llm/key }}",
        "{{secrets/llm/key}} ",
        " {{secrets/llm/key}}",
        "{{secrets/llm/key}}\n",
        "prefix {{secrets/llm/key}}",
        "{secrets/llm/key}",
        "{{secret/llm/key}}",
        "{{SECRETS/llm/key}}",
        "{{secrets/ll m/key}}",
        "{{secrets/llm/k$y}}",
        "{{secrets/llm/kéy}}",
    ],
)
def test_parse_invalid_references(text: str) -> None:
    assert parse_secret_reference(text) is None


def test_reference_pattern_finds_references_in_text() -> None:
    found = SECRET_REFERENCE_PATTERN.findall("Bearer {{secrets/a/b}} and {{secrets/c/d}}")
    assert found == [("a", "b"), ("c", "d")]


@given(
    scope=st.text(alphabet=NAME_CHARS, min_size=1, max_size=20),
    key=st.text(alphabet=NAME_CHARS, min_size=1, max_size=20),
)
def test_parse_reference_round_trip(scope: str, key: str) -> None:
    assert parse_secret_reference(f"{{{{secrets/{scope}/{key}}}}}") == (scope, key)


def test_resolve(store: SecretStore) -> None:
    store.create_scope("llm")
    store.put_secret("llm", "k", SECRET)
    assert store.resolve("{{secrets/llm/k}}") == SECRET
    with pytest.raises(SecretStoreError) as info:
        store.resolve("{{secrets/llm/missing}}")
    assert info.value.error_code == RESOURCE_DOES_NOT_EXIST
    with pytest.raises(SecretStoreError) as info:
        store.resolve(SECRET)  # a pasted plaintext must not be echoed back
    assert info.value.error_code == INVALID_PARAMETER_VALUE
    assert SECRET not in info.value.message


# -- error codes -----------------------------------------------------------------


def test_error_codes(store: SecretStore) -> None:
    store.create_scope("llm")
    cases = [
        (lambda: store.create_scope("llm"), RESOURCE_ALREADY_EXISTS, "llm"),
        (lambda: store.delete_scope("nope"), RESOURCE_DOES_NOT_EXIST, "nope"),
        (lambda: store.get_secret("nope", "k"), RESOURCE_DOES_NOT_EXIST, "nope"),
        (lambda: store.get_secret("llm", "missing"), RESOURCE_DOES_NOT_EXIST, "missing"),
        (lambda: store.put_secret("nope", "k", SECRET), RESOURCE_DOES_NOT_EXIST, "nope"),
        (lambda: store.list_secrets("nope"), RESOURCE_DOES_NOT_EXIST, "nope"),
        (lambda: store.delete_secret("nope", "k"), RESOURCE_DOES_NOT_EXIST, "nope"),
        (lambda: store.delete_secret("llm", "missing"), RESOURCE_DOES_NOT_EXIST, "missing"),
        (lambda: store.put_secret("llm", "k", 123), INVALID_PARAMETER_VALUE, "string"),  # type: ignore[arg-type]
        (lambda: store.put_secret("llm", "k", "\ud800"), INVALID_PARAMETER_VALUE, "UTF-8"),
        (
            lambda: store.put_secret("llm", "k", "x" * (128 * 1024 + 1)),
            INVALID_PARAMETER_VALUE,
            "larger",
        ),
    ]
    for call, code, named in cases:
        with pytest.raises(SecretStoreError) as info:
            call()
        assert info.value.error_code == code
        assert named in info.value.message
        assert str(info.value) == info.value.message
        assert SECRET not in info.value.message
        assert info.value.to_json() == {"error_code": code, "message": info.value.message}
    assert not store.has("llm", "k")


@pytest.mark.parametrize("bad", ["", "a" * 129, "a/b", "a b", "ünï", "a\nb", "{{x}}"])
def test_invalid_names_are_rejected(store: SecretStore, bad: str) -> None:
    store.create_scope("ok")
    calls = [
        lambda: store.create_scope(bad),
        lambda: store.put_secret("ok", bad, SECRET),
        lambda: store.get_secret(bad, "k"),
        lambda: store.has("ok", bad),
    ]
    for call in calls:
        with pytest.raises(SecretStoreError) as info:
            call()
        assert info.value.error_code == INVALID_PARAMETER_VALUE
        assert SECRET not in info.value.message


def test_max_length_name_is_accepted(store: SecretStore) -> None:
    name = "a" * 128
    store.create_scope(name)
    store.put_secret(name, name, "v")
    assert store.resolve(f"{{{{secrets/{name}/{name}}}}}") == "v"


def test_http_status_mapping() -> None:
    assert SecretStoreError(RESOURCE_DOES_NOT_EXIST, "x").http_status == 404
    assert SecretStoreError(RESOURCE_ALREADY_EXISTS, "x").http_status == 409
    assert SecretStoreError(INVALID_PARAMETER_VALUE, "x").http_status == 400
    assert SecretStoreError(INTERNAL_ERROR, "x").http_status == 500
    with pytest.raises(ValueError):
        SecretStoreError("NOT_A_CODE", "x")  # type: ignore[arg-type]


def test_secret_store_for_state(tmp_path: Path) -> None:
    state = tmp_path / "proj" / ".engine" / "state.db"
    with secret_store_for_state(state) as opened:
        assert opened.db_path == state.parent / "secrets.db"
        assert opened.key_path == state.parent / "secrets.key"
        assert opened.db_path.exists()


# -- CLI -------------------------------------------------------------------------


def _runner() -> CliRunner:
    try:  # Click < 8.2 mixes stderr into output unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def _invoke(args: list[str], state: Path, stdin: str | None = None) -> Result:
    return _runner().invoke(secrets_app, [*args, "--state", str(state)], input=stdin)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "proj" / ".engine" / "state.db"


def test_cli_full_flow(state_path: Path) -> None:
    result = _invoke(["create-scope", "llm"], state_path)
    assert result.exit_code == 0, result.output

    result = _invoke(["put-secret", "llm", "openai_key"], state_path, stdin=SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output

    with secret_store_for_state(state_path) as opened:
        # The single trailing newline from `echo` is not part of the secret.
        assert opened.get_secret("llm", "openai_key") == SECRET

    result = _invoke(["list-secrets", "llm"], state_path)
    assert result.exit_code == 0
    assert "openai_key" in result.stdout
    assert SECRET not in result.output

    result = _invoke(["list-secrets", "llm", "--json"], state_path)
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert [s["key"] for s in payload["secrets"]] == ["openai_key"]
    assert isinstance(payload["secrets"][0]["last_updated_timestamp"], int)
    assert SECRET not in result.output

    result = _invoke(["list-scopes", "--json"], state_path)
    assert json.loads(result.stdout) == {"scopes": [{"name": "llm", "backend_type": "DATABRICKS"}]}
    result = _invoke(["list-scopes"], state_path)
    assert result.stdout.split() == ["llm"]

    assert _invoke(["delete-secret", "llm", "openai_key"], state_path).exit_code == 0
    assert json.loads(_invoke(["list-secrets", "llm", "--json"], state_path).stdout) == {
        "secrets": []
    }
    assert _invoke(["delete-scope", "llm"], state_path).exit_code == 0
    assert _invoke(["list-scopes"], state_path).stdout == ""


def test_cli_keeps_inner_newlines(state_path: Path) -> None:
    _invoke(["create-scope", "s"], state_path)
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    assert _invoke(["put-secret", "s", "pem"], state_path, stdin=pem + "\n").exit_code == 0
    with secret_store_for_state(state_path) as opened:
        assert opened.get_secret("s", "pem") == pem


def _assert_one_line_error(result: Result, expected: str) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert expected in lines[0]


def test_cli_missing_scope_is_one_error_line(state_path: Path) -> None:
    result = _invoke(["list-secrets", "nope"], state_path)
    _assert_one_line_error(result, "nope")

    result = _invoke(["put-secret", "nope", "k"], state_path, stdin=SECRET)
    _assert_one_line_error(result, "nope")
    assert SECRET not in result.output

    _assert_one_line_error(_invoke(["delete-scope", "nope"], state_path), "nope")
    _assert_one_line_error(_invoke(["delete-secret", "nope", "k"], state_path), "nope")


def test_cli_other_errors(state_path: Path) -> None:
    _invoke(["create-scope", "s"], state_path)
    _assert_one_line_error(_invoke(["create-scope", "s"], state_path), "already exists")
    _assert_one_line_error(_invoke(["create-scope", "bad name"], state_path), "invalid")
    _assert_one_line_error(_invoke(["put-secret", "s", "k"], state_path, stdin=""), "stdin")
    _assert_one_line_error(_invoke(["put-secret", "s", "k"], state_path, stdin="\n"), "stdin")


def test_cli_wrong_key_is_one_error_line(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _invoke(["create-scope", "s"], state_path)
    _invoke(["put-secret", "s", "k"], state_path, stdin=SECRET)
    monkeypatch.setenv(KEY_ENV_VAR, Fernet.generate_key().decode())
    result = _invoke(["put-secret", "s", "k2"], state_path, stdin="v")
    _assert_one_line_error(result, "wrong ENGINE_SECRETS_KEY or key file?")


def test_cli_never_takes_value_as_argument(state_path: Path) -> None:
    _invoke(["create-scope", "s"], state_path)
    for extra in (["the-value"], ["--value", "the-value"], ["--string-value", "the-value"]):
        result = _invoke(["put-secret", "s", "k", *extra], state_path, stdin="")
        assert result.exit_code == 2  # usage error
    with secret_store_for_state(state_path) as opened:
        assert not opened.has("s", "k")


def test_cli_prompts_with_hidden_confirmed_input(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _invoke(["create-scope", "s"], state_path)
    monkeypatch.setattr(cli_secrets, "_stdin_is_tty", lambda: True)
    # First pair mismatches, so the prompt asks again.
    typed = "hunter1\nhunter2\nhunter3\nhunter3\n"
    result = _invoke(["put-secret", "s", "k"], state_path, stdin=typed)
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    # Hidden input: none of the typed values is echoed back.
    assert "hunter" not in result.stdout
    with secret_store_for_state(state_path) as opened:
        assert opened.get_secret("s", "k") == "hunter3"


def test_cli_state_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(secrets_app, ["create-scope", "cwd"]).exit_code == 0
    assert (tmp_path / ".engine" / "secrets.db").exists()

    env_state = tmp_path / "elsewhere" / "state.db"
    monkeypatch.setenv(cli_secrets.STATE_ENV_VAR, str(env_state))
    assert runner.invoke(secrets_app, ["create-scope", "env"]).exit_code == 0
    with secret_store_for_state(env_state) as opened:
        assert [s.name for s in opened.list_scopes()] == ["env"]


def test_cli_no_args_shows_help() -> None:
    result = _runner().invoke(secrets_app, [])
    assert "put-secret" in result.output
    assert "Traceback" not in result.output


def test_module_exports() -> None:
    for module in (secrets_store, cli_secrets):
        for name in module.__all__:
            assert hasattr(module, name), name
