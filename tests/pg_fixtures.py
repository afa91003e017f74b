"""pytest fixtures over tests/_postgres.py: a cluster per test process, a database per test.

`state_url` is the parameter that runs a suite on both stores: a SQLite file path, or the URL
of a fresh PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _postgres import PostgresCluster, PostgresMissing

__all__ = ["postgres_cluster", "postgres_url", "state_url"]


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
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state of one test: `<tmp>/state/state.db`, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "state.db")
    return request.getfixturevalue("postgres_url")
