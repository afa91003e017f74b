"""schemathesis against the control plane's own /openapi.json: no 5xx, and every response
matches the document (status code, content type, body schema)."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from engine_harness import Engine
from hypothesis import HealthCheck, settings
from serving_harness import ServerProcess

from engine.access.tokens import create_token

TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root: Path = tmp_path_factory.mktemp("contract")
    engine = Engine(root / "state.db")
    _, TOKEN["admin"] = create_token(engine.store, "admin@example.com", admin=True)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "key", "sk-contract")
    engine.close()
    with ServerProcess(root / "state.db") as server:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_control_plane_conforms(case: schemathesis.Case) -> None:
    # Schema-valid bodies may still break a platform rule (E1, T3...), which is a 400 by design,
    # so "valid data is accepted" is not checked; everything else is.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN['admin']}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
