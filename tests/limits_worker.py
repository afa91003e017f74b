"""One OS process with its own RedisLimits, for tests/test_redis_limits.py.

Reads one JSON line from stdin ({url, lineage, endpoint_id, spec, callers: [[name, groups,
kind], ...]}), connects, prints `ready`, waits for a `go` line, then admits every caller at once
(one asyncio task each) and prints the JSON list of [caller, admitted, status].
"""

from __future__ import annotations

import asyncio
import json
import sys

from engine.access.tokens import Principal
from engine.gateway._metrics import Metrics
from engine.gateway._ratelimit import rules_from_spec
from engine.gateway._redis_limits import RedisLimits
from engine.gateway._table import EndpointRoute


def route_of(endpoint_id: str, spec: dict) -> EndpointRoute:
    return EndpointRoute(
        name="limited",
        id=endpoint_id,
        task="llm/v1/chat",
        config_version=1,
        entities={},
        order=[],
        cumulative=[],
        targets=[],
        rate_rules=rules_from_spec(spec),
        usage_tracking=False,
        fallback=False,
    )


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    limits = RedisLimits(job["url"], lineage=job["lineage"], metrics=Metrics())
    await limits.start()
    assert limits.up, "Redis did not answer"
    route = route_of(job["endpoint_id"], job["spec"])
    callers = [Principal(n, frozenset(g), k) for n, g, k in job["callers"]]
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    decisions = await asyncio.gather(*(limits.admit(route, c, None) for c in callers))
    print(
        json.dumps(
            [[c.name, d.admitted, d.status] for c, d in zip(callers, decisions, strict=True)]
        )
    )
    await limits.close()


if __name__ == "__main__":
    asyncio.run(main())
