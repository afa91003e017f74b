"""`engine serve --workers N`: uvicorn starts N worker processes on one port; each builds its
own serving host here, from what the parent command put in $ENGINE_WORKER_CONFIG. Each worker
is a replica of the state of its own (engine/host/membership.py), with a private port for the
other replicas (engine/host/peer_listener.py).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from engine.gateway._limiter import LimitsFallback
from engine.host.app import ServingApp
from engine.host.http_protocol import HeaderTimeoutProtocol, header_timeout_protocol

__all__ = ["CONFIG_ENV", "Protocol", "make_app"]

CONFIG_ENV = "ENGINE_WORKER_CONFIG"


def _header_timeout() -> float:
    try:
        return float(json.loads(os.environ.get(CONFIG_ENV, "{}")).get("header_timeout", 10.0))
    except ValueError:
        return 10.0


# uvicorn imports the protocol of each worker by name (`http="engine.host.worker:Protocol"`):
# a class made at run time in the parent cannot be sent to a spawned worker.
Protocol: type[HeaderTimeoutProtocol] = header_timeout_protocol(_header_timeout())


def make_app() -> ServingApp:
    """uvicorn's app factory in each worker."""
    config: dict[str, Any] = json.loads(os.environ[CONFIG_ENV])
    logging.basicConfig(
        level=config["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return ServingApp(
        config["state"],
        address="",  # the private port's, once it listens
        peer_listen=(config["host"], Protocol),
        scale_to_zero_after=config["scale_to_zero_after"],
        cold_start_wait=config["cold_start_wait"],
        metrics_public=config["metrics_public"],
        limits=config["limits"],
        limits_fallback=LimitsFallback(config["limits_fallback"]),
        replica=f"{config['replica']}/{os.getpid()}",
        safety_endpoint=config.get("safety_endpoint"),
        tables_root=config.get("tables_root"),
    )
