"""The router's Prometheus metrics: requests by status, retries, per-node
state changes, latency histogram, per-backend gauges."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vigil.core.routing import RetryPolicy, RoutingTable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.retries = 0
        self.state_changes: Counter[tuple[str, str]] = Counter()
        self.latency = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def finished(self, status: int, seconds: float, attempts: int) -> None:
        self.requests[status] += 1
        self.latency_sum += seconds
        self.latency_count += 1
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.latency[i] += 1
                return
        self.latency[-1] += 1

    def render(self, table: "RoutingTable", now: float, policy: "RetryPolicy") -> str:
        out = ["# HELP vigil_router_requests_total Requests answered, by HTTP status.",
               "# TYPE vigil_router_requests_total counter"]
        out += [f'vigil_router_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.requests.items())]
        out += ["# HELP vigil_router_retries_total Attempts retried on another node.",
                "# TYPE vigil_router_retries_total counter", f"vigil_router_retries_total {self.retries}",
                "# HELP vigil_router_retries_denied_total Retries refused by the retry budget.",
                "# TYPE vigil_router_retries_denied_total counter",
                f"vigil_router_retries_denied_total {policy.denied}",
                "# HELP vigil_router_node_state_changes_total Backend eligibility changes.",
                "# TYPE vigil_router_node_state_changes_total counter"]
        out += [f'vigil_router_node_state_changes_total{{node="{n}",to="{s}"}} {c}'
                for (n, s), c in sorted(self.state_changes.items())]
        out += ["# HELP vigil_router_backend_eligible 1 while the node may receive traffic.",
                "# TYPE vigil_router_backend_eligible gauge"]
        out += [f'vigil_router_backend_eligible{{node="{b.name}"}} {int(b.why_not(now) is None)}'
                for b in table.backends.values()]
        out += ["# HELP vigil_router_request_seconds Request latency through the router.",
                "# TYPE vigil_router_request_seconds histogram"]
        cum = 0
        for b, n in zip(BUCKETS, self.latency):
            cum += n
            out.append(f'vigil_router_request_seconds_bucket{{le="{b}"}} {cum}')
        out.append(f'vigil_router_request_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        out += [f"vigil_router_request_seconds_sum {self.latency_sum:.6f}",
                f"vigil_router_request_seconds_count {self.latency_count}"]
        return "\n".join(out) + "\n"
