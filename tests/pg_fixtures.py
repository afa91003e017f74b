"""pytest fixtures over tests/_postgres.py: a cluster per test process, a database per test.

`state_url` is the parameter that runs a suite on both stores: a SQLite file path, or the URL
of a fresh PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _postgres import PostgresCluster, PostgresMissing

__all__ = ["database_text", "module_state", "postgres_cluster", "postgres_url", "state_url"]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    # Session scope is per process: each xdist worker starts (and stops) its own cluster.
    try:
        cluster = PostgresCluster.start()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The state of one test: `<tmp>/state/state.db`, or a fresh PostgreSQL database whose
    per-host files (key file, runner folders) go to `<tmp>/home` ($ENGINE_HOME, inherited by
    the CLI and servers the test starts), never into the working directory."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "state.db")
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    return request.getfixturevalue("postgres_url")


def module_state(request: pytest.FixtureRequest, root: Path, env: pytest.MonkeyPatch) -> str:
    """For a module-scoped fixture parametrized with "sqlite"/"postgresql": `root/state.db`,
    or a fresh database with $ENGINE_HOME set to `root/home` through `env`."""
    if request.param == "sqlite":
        return str(root / "state.db")
    env.setenv("ENGINE_HOME", str(root / "home"))
    return request.getfixturevalue("postgres_cluster").create_database()


def database_text(url: str) -> str:
    """Every row of every table this engine writes in a PostgreSQL database, as text."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
            "FROM information_schema.tables WHERE table_schema IN "
            "('public', 'engine_secrets', 'engine_usage')"
        ).fetchall()
        return "\n".join(
            str(row[0])
            for (table,) in tables
            for row in conn.execute(f"SELECT t::text FROM {table} t")
        )
