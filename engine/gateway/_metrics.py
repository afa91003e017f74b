"""Prometheus metrics of the data plane, rendered in the text exposition format.

Every series is labelled with its endpoint, so `render(visible=...)` can leave out, series by
series, those of endpoints a caller may not view (their names alone say what other teams
serve). The filter compares the endpoint of each series as stored, never the rendered text, so
no endpoint name (a prefix of another, or one that needs escaping) can match another's series.
A series without an endpoint label (none yet: process-wide ones) names no endpoint and is
always shown.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

__all__ = ["Metrics", "Visible"]

# Which endpoints' series to render (None: all of them).
Visible = Callable[[str], bool] | None

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(**labels: str) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _with_replica(lines: Iterable[str], replica: str) -> Iterator[str]:
    """Every sample labelled with the replica that counted it (replicas are scraped one by
    one; their series must not collide when a dashboard sums them)."""
    label = _labels(replica=replica)[1:-1]
    for line in lines:
        match = None if line.startswith("#") else _NAME.match(line)
        if match is None:
            yield line
            continue
        name, rest = line[: match.end()], line[match.end() :]
        yield f"{name}{{{label},{rest[1:]}" if rest.startswith("{") else f"{name}{{{label}}}{rest}"


class Metrics:
    def __init__(self, replica: str = "") -> None:
        # The replica label of every series ('' while the host has not started).
        self.replica = replica
        # Whether this replica runs the state's runners (None: not a serving host).
        self.runner_host: bool | None = None
        # Whether the Ray cluster's head answers (None: runners are local processes).
        self.ray_head_up: bool | None = None
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.latency_sum: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.tokens: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.rate_limited: defaultdict[str, int] = defaultdict(int)
        self.upstream_errors: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        # Guardrail decisions: (endpoint, input|output, guardrail, block|mask) -> count
        # (a mask counts the entities replaced).
        self.guardrails: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        # A shared limits backend (Redis): None when limits are counted in-process.
        self.limits_backend_up: int | None = None
        self.limits_backend_errors = 0
        self.limits_fallback: defaultdict[str, int] = defaultdict(int)
        # The payload and usage tables' writer (engine/tables/recorder.py), once it exists.
        self.tables_enabled = False
        self.tables_dropped: defaultdict[str, int] = defaultdict(int)
        self.tables_write_errors = 0

    def observe(
        self,
        endpoint: str,
        entity: str,
        status: int,
        seconds: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.requests[(endpoint, entity, str(status))] += 1
        key = (endpoint, entity)
        counts = self.latency.get(key)
        if counts is None:
            counts = self.latency[key] = [0] * (len(_BUCKETS) + 1)
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.latency_sum[key] += seconds
        if prompt_tokens:
            self.tokens[(endpoint, entity, "prompt")] += prompt_tokens
        if completion_tokens:
            self.tokens[(endpoint, entity, "completion")] += completion_tokens

    def render(self, visible: Visible = None) -> str:
        def shown(endpoint: str) -> bool:
            return visible is None or visible(endpoint)

        lines = [
            "# HELP serving_requests_total Requests answered, by endpoint, entity and status.",
            "# TYPE serving_requests_total counter",
        ]
        for (endpoint, entity, status), n in sorted(self.requests.items()):
            if not shown(endpoint):
                continue
            labels = _labels(endpoint=endpoint, entity=entity, status=status)
            lines.append(f"serving_requests_total{labels} {n}")
        lines += [
            "# HELP serving_request_duration_seconds Request latency through the gateway.",
            "# TYPE serving_request_duration_seconds histogram",
        ]
        for (endpoint, entity), counts in sorted(self.latency.items()):
            if not shown(endpoint):
                continue
            running = 0
            for bound, n in zip((*_BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    "serving_request_duration_seconds_bucket"
                    f"{_labels(endpoint=endpoint, entity=entity, le=le)} {running}"
                )
            labels = _labels(endpoint=endpoint, entity=entity)
            total = self.latency_sum[(endpoint, entity)]
            lines.append(f"serving_request_duration_seconds_sum{labels} {total}")
            lines.append(f"serving_request_duration_seconds_count{labels} {running}")
        lines += [
            "# HELP serving_tokens_total Tokens, by endpoint, entity and type.",
            "# TYPE serving_tokens_total counter",
        ]
        for (endpoint, entity, kind), n in sorted(self.tokens.items()):
            if not shown(endpoint):
                continue
            lines.append(
                f"serving_tokens_total{_labels(endpoint=endpoint, entity=entity, type=kind)} {n}"
            )
        lines += [
            "# HELP serving_rate_limited_total Requests refused by a rate limit.",
            "# TYPE serving_rate_limited_total counter",
        ]
        for endpoint, n in sorted(self.rate_limited.items()):
            if not shown(endpoint):
                continue
            lines.append(f"serving_rate_limited_total{_labels(endpoint=endpoint)} {n}")
        lines += [
            "# HELP serving_upstream_errors_total Upstream failures, by kind.",
            "# TYPE serving_upstream_errors_total counter",
        ]
        for (endpoint, entity, kind), n in sorted(self.upstream_errors.items()):
            if not shown(endpoint):
                continue
            labels = _labels(endpoint=endpoint, entity=entity, kind=kind)
            lines.append(f"serving_upstream_errors_total{labels} {n}")
        lines += [
            "# HELP serving_guardrail_actions_total Guardrail blocks (requests) and masks "
            "(entities replaced), by endpoint, direction, guardrail and action.",
            "# TYPE serving_guardrail_actions_total counter",
        ]
        for (endpoint, direction, guardrail, action), n in sorted(self.guardrails.items()):
            if not shown(endpoint):
                continue
            labels = _labels(
                endpoint=endpoint, direction=direction, guardrail=guardrail, action=action
            )
            lines.append(f"serving_guardrail_actions_total{labels} {n}")
        if self.tables_enabled:
            lines += self._tables_lines(shown)
        if self.limits_backend_up is not None:
            lines += self._limits_lines()
        if self.runner_host is not None:
            lines += [
                "# HELP engine_replica_runner_host Whether this replica runs the runners.",
                "# TYPE engine_replica_runner_host gauge",
                f"engine_replica_runner_host {int(self.runner_host)}",
            ]
        if self.ray_head_up is not None:
            lines += [
                "# HELP engine_ray_head_up Whether the Ray cluster of --runners ray answers.",
                "# TYPE engine_ray_head_up gauge",
                f"engine_ray_head_up {int(self.ray_head_up)}",
            ]
        if self.replica:
            lines = list(_with_replica(lines, self.replica))
        return "\n".join(lines) + "\n"

    def _tables_lines(self, shown: Callable[[str], bool]) -> list[str]:
        lines = [
            "# HELP engine_tables_dropped_total Answered requests left out of the payload and "
            "usage tables because the writer's queue was full.",
            "# TYPE engine_tables_dropped_total counter",
        ]
        for endpoint, n in sorted(self.tables_dropped.items()):
            if shown(endpoint):
                lines.append(f"engine_tables_dropped_total{_labels(endpoint=endpoint)} {n}")
        return lines + [
            "# HELP engine_tables_write_errors_total Batches that could not be written to a "
            "table (logged).",
            "# TYPE engine_tables_write_errors_total counter",
            f"engine_tables_write_errors_total {self.tables_write_errors}",
        ]

    def _limits_lines(self) -> list[str]:
        """The Redis limits backend's health (process-wide: no endpoint label)."""
        lines = [
            "# HELP engine_limits_backend_up Whether the rate-limit store (Redis) answers.",
            "# TYPE engine_limits_backend_up gauge",
            f"engine_limits_backend_up {self.limits_backend_up}",
            "# HELP engine_limits_backend_errors_total Calls to the rate-limit store that failed.",
            "# TYPE engine_limits_backend_errors_total counter",
            f"engine_limits_backend_errors_total {self.limits_backend_errors}",
            "# HELP engine_limits_fallback_total Rate-limit decisions made without the store, "
            "by --limits-fallback mode.",
            "# TYPE engine_limits_fallback_total counter",
        ]
        for mode, n in sorted(self.limits_fallback.items()):
            lines.append(f"engine_limits_fallback_total{_labels(mode=mode)} {n}")
        return lines
