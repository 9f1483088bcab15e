"""The router's Prometheus metrics (prometheus_client, one registry per
router) and its status document.

Counters are updated on the data path; per-backend gauges (eligible,
in-flight, concurrency limit, the engine's reported queue depth, latency)
and the router's queue are read from the routing table at scrape time by a
collector, so they are never stale and cost nothing per request.

The collector and the status document read a RouterState: a typed view the
router builds at request time (`Router.state()`, with `Membership.state()`).
This module imports no part of the router (vigil.router.proxy imports it),
and mypy checks that it reads only what the view declares
(tests/unit/test_types.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vigil.core.routing import Backend

if TYPE_CHECKING:
    from vigil.router.http1 import Handler, Incoming, Reply


@dataclass(frozen=True)
class MembershipState:
    """The router's view of the cluster's members (Membership.state)."""
    etcd_ok: bool
    heartbeat: Mapping[str, int]  # heartbeat packets received, by verdict
    keyring: Mapping[str, Collection[int]]  # node -> the key ids accepted from it
    networks: Sequence[object]  # the cluster's networks (vigil.core.allowlist), shown as str
    bad_records: Mapping[str, str]  # key -> what is wrong with it
    bad_unlisted: int  # bad records past the ones listed
    failures: int  # membership loop errors survived


@dataclass(frozen=True)
class RouterState:
    """What /metrics and /_vigil/status show, read at one instant `now` (monotonic)."""
    now: float
    backends: tuple[Backend, ...]
    panicking: bool
    waiting: int  # requests in the queue
    shed: int  # shed on arrival (vigil.core.admission)
    shed_late: int  # shed after waiting
    queue_wait: float  # s
    retries: int
    retries_denied: int
    retry_budget: float  # tokens left
    idempotent_replays: int
    connections: int
    inflight: int
    max_connections: int
    max_inflight: int
    membership_mode: str  # the config's `membership`
    membership: MembershipState

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vigil_router_requests", "Requests answered, by HTTP status.", ["code"],
                                registry=r)
        self._by_status: dict[int, Counter] = {}
        self.retries = Counter("vigil_router_retries", "Attempts retried on another node.", registry=r)
        self.stream_resumes = Counter("vigil_router_stream_resumes", "Streamed generations whose node failed "
                                      "mid-stream: resumed on another node, or broken (not resumable).",
                                      ["outcome"], registry=r)
        self.shed = Counter("vigil_router_shed", "Requests answered 429 by the router: queue_full "
                            "(shed on arrival), queue_timeout (waited too long), engine_full "
                            "(every engine tried shed it).", ["reason"], registry=r)
        self.state_changes = Counter("vigil_router_node_state_changes", "Backend eligibility changes.",
                                     ["node", "to"], registry=r)
        self.latency = Histogram("vigil_router_request_seconds", "Request latency through the router "
                                 "(to the end of the answer).", buckets=BUCKETS, registry=r)
        self.paced = Counter("vigil_router_paced", "Requests held until the Retry-After their connection "
                             "was given with a 429 (a client that retried at once), then served.", registry=r)
        self.shed_latency = Histogram("vigil_router_shed_seconds", "Time to answer a shed request.",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
                                      registry=r)

    def node_changed(self, node: str, state: str) -> None:
        """A backend's eligibility changed (`state`: "eligible", a reason, or
        "forgotten", which drops the node's labels: they stay bounded by the
        names the router tracks, vigil.router.membership)."""
        if state == "forgotten":
            for to in ("eligible", "ineligible"):
                with contextlib.suppress(KeyError):
                    self.state_changes.remove(node, to)
            return
        self.state_changes.labels(node, "eligible" if state == "eligible" else "ineligible").inc()

    def attach(self, state: Callable[[], RouterState]) -> None:
        """Read `state()` at each scrape (the router's, Router.state)."""
        self.registry.register(_TableCollector(state))

    def finished(self, status: int, seconds: float) -> None:
        child = self._by_status.get(status)
        if child is None:  # labels() locks and builds a key: once per status, not per request
            child = self._by_status[status] = self.requests.labels(str(status))
        child.inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TableCollector:
    def __init__(self, state: Callable[[], RouterState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        rt = self.state()
        now = rt.now
        backends = rt.backends
        gauges: dict[str, tuple[str, Callable[[Backend], float]]] = {
            "eligible": ("1 while the node may receive traffic.", lambda b: b.why_not(now) is None),
            "in_flight": ("Attempts this router has on the node now.", lambda b: b.outstanding),
            "limit": ("The node's adaptive concurrency limit (this router).", lambda b: b.limit.limit),
            "engine_queue": ("Work pending at the engine, as it last reported (every router's).",
                             lambda b: b.engine_queue),
            "latency_seconds": ("Moving average of answered attempts.", lambda b: b.limit.latency),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(f"vigil_router_backend_{name}", doc, labels=["node"])
            for b in backends:
                g.add_metric([b.name], float(value(b)))
            yield g
        counters: dict[str, tuple[str, Callable[[Backend], int]]] = {
            "engine_shed": ("Attempts the engine answered 429.", lambda b: b.shed_by_engine),
            "not_ready": ("Attempts the engine refused as not ready (it ran nothing; the request went "
                          "to another node).", lambda b: b.refused_not_ready),
        }
        for name, (doc, count) in counters.items():
            c = CounterMetricFamily(f"vigil_router_backend_{name}", doc, labels=["node"])
            for b in backends:
                c.add_metric([b.name], count(b))
            yield c
        yield GaugeMetricFamily("vigil_router_queue_length", "Requests waiting for a slot.",
                                value=rt.waiting)
        yield GaugeMetricFamily("vigil_router_panic", "1 while the panic threshold routes to every "
                                "node not confirmed gone.", value=int(rt.panicking))
        yield CounterMetricFamily("vigil_router_retries_denied", "Retries refused by the retry budget.",
                                  value=rt.retries_denied)


def status_document(rt: RouterState) -> dict[str, Any]:
    now, m = rt.now, rt.membership
    return {
        "etcd_ok": m.etcd_ok, "retries": rt.retries,
        "retry_budget": round(rt.retry_budget, 2), "idempotent_replays": rt.idempotent_replays,
        "queue": {"waiting": rt.waiting, "shed": rt.shed, "shed_late": rt.shed_late,
                  "queue_wait": rt.queue_wait},
        "panic": rt.panicking,
        "backends": {b.name: _backend(b, now) for b in rt.backends},
        "limits": {"connections": rt.connections, "inflight": rt.inflight,
                   "max_connections": rt.max_connections,
                   "max_inflight": rt.max_inflight},
        "heartbeat": dict(m.heartbeat),
        "keyring": {n: sorted(ids) for n, ids in m.keyring.items()},
        "membership": rt.membership_mode,
        "cluster_networks": [str(n) for n in m.networks],
        "bad_records": dict(m.bad_records), "bad_records_unlisted": m.bad_unlisted,
        "membership_failures": m.failures}


def _backend(b: Backend, now: float) -> dict[str, Any]:
    return {"url": b.url, "ready": b.ready, "heard": b.heard, "alive": b.alive,
            "state": b.state,
            "outstanding": b.outstanding, "limit": round(b.limit.limit, 2),
            "engine_queue": b.engine_queue, "shed_by_engine": b.shed_by_engine,
            "refused_not_ready": b.refused_not_ready,
            "latency_ms": round(b.limit.latency * 1000, 1),
            "service_ms": round(b.limit.service * 1000, 1), "slots": b.limit.slots,
            "served": b.served, "failures": b.failures,
            "eligible": b.why_not(now) is None, "why_not": b.why_not(now)}


def admin_handler(tokens: dict[str, str] | None, metrics: RouterMetrics, state: Callable[[], RouterState]) -> Handler:
    """The admin listener's handler: GET /metrics and GET /_vigil/status (with
    `admin.tokens_file`'s `tokens`, 401 without one of them), the status page
    GET /_vigil/ui (vigil.ui: it holds no data; its script fetches the status
    with the token), 404 else."""
    import json

    from vigil import ui

    from prometheus_client import CONTENT_TYPE_LATEST

    from vigil.web import bearer_holder

    async def handle(req: Incoming, reply: Reply) -> None:
        if req.method == "GET" and req.path in ("/_vigil/ui", "/_vigil/ui.js"):  # holds no data: open
            page = req.path == "/_vigil/ui"
            reply.whole(200, [("Content-Type", "text/html; charset=utf-8" if page else "text/javascript"),
                              *ui.SECURITY_HEADERS], ui.HTML if page else ui.SCRIPT)
        elif tokens and bearer_holder(req.header("Authorization"), tokens) is None:
            reply.whole(401, [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                        b"needs Authorization: Bearer <token> (admin.tokens_file)\n")
        elif req.method == "GET" and req.path == "/metrics":
            reply.whole(200, [("Content-Type", CONTENT_TYPE_LATEST)], metrics.render())
        elif req.method == "GET" and req.path == "/_vigil/status":
            reply.whole(200, [("Content-Type", "application/json")],
                        json.dumps(status_document(state())).encode())
        else:
            reply.whole(404, [("Content-Type", "text/plain")], b"GET /metrics, /_vigil/status or /_vigil/ui\n")
    return handle
