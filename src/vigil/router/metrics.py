"""The router's Prometheus metrics (prometheus_client, one registry per
router) and its status document.

Counters are updated on the data path; per-backend gauges (eligible,
in-flight, concurrency limit, the engine's reported queue depth, latency)
and the router's queue are read from the routing table at scrape time by a
collector, so they are never stale and cost nothing per request.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# The router (vigil.router.proxy.Router) is passed in, never imported: proxy imports
# this module, and the collector only reads its table, policy, queue and membership.
Router = Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vigil_router_requests", "Requests answered, by HTTP status.", ["code"],
                                registry=r)
        self._by_status: dict[int, Any] = {}
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

    def attach(self, router: Router) -> None:
        self.registry.register(_TableCollector(router))

    def finished(self, status: int, seconds: float) -> None:
        child = self._by_status.get(status)
        if child is None:  # labels() locks and builds a key: once per status, not per request
            child = self._by_status[status] = self.requests.labels(str(status))
        child.inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TableCollector:
    def __init__(self, router: Router):
        self.router = router

    def collect(self) -> Iterator[Any]:
        rt = self.router
        now = rt.clock.now()
        backends = list(rt.table.backends.values())
        gauges = {
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
        c = CounterMetricFamily("vigil_router_backend_engine_shed", "Attempts the engine answered 429.",
                                labels=["node"])
        for b in backends:
            c.add_metric([b.name], b.shed_by_engine)
        yield c
        yield GaugeMetricFamily("vigil_router_queue_length", "Requests waiting for a slot.",
                                value=len(rt.queue))
        yield GaugeMetricFamily("vigil_router_panic", "1 while the panic threshold routes to every "
                                "node not confirmed gone.", value=int(rt.table.panicking))
        yield CounterMetricFamily("vigil_router_retries_denied", "Retries refused by the retry budget.",
                                  value=rt.policy.denied)


def status_document(rt: Router) -> dict[str, Any]:
    now = rt.clock.now()
    return {
        "etcd_ok": rt.membership.etcd_ok, "retries": rt.policy.retries,
        "retry_budget": round(rt.policy.tokens, 2), "idempotent_replays": rt.cache.replays,
        "queue": {"waiting": len(rt.queue), "shed": rt.admission.shed, "shed_late": rt.queue.shed_late,
                  "queue_wait": rt.admission.queue_wait},
        "panic": rt.table.panicking,
        "backends": {b.name: {"url": b.url, "ready": b.ready, "heard": b.heard, "alive": b.alive,
                              "state": b.state,
                              "outstanding": b.outstanding, "limit": round(b.limit.limit, 2),
                              "engine_queue": b.engine_queue, "shed_by_engine": b.shed_by_engine,
                              "latency_ms": round(b.limit.latency * 1000, 1),
                              "service_ms": round(b.limit.service * 1000, 1), "slots": b.limit.slots,
                              "served": b.served, "failures": b.failures,
                              "eligible": b.why_not(now) is None, "why_not": b.why_not(now)}
                     for b in rt.table.backends.values()},
        "limits": {"connections": len(rt.clients), "inflight": rt.active,
                   "max_connections": rt.cfg.limits.max_connections,
                   "max_inflight": rt.cfg.limits.max_inflight},
        "heartbeat": dict(rt.membership.receiver.counters),
        "keyring": {n: sorted(ids) for n, ids in rt.membership.receiver.ring.members.items()},
        "membership": rt.cfg.membership,
        "cluster_networks": [str(n) for n in rt.membership.networks.networks()],
        "bad_records": dict(rt.membership.bad_records), "bad_records_unlisted": rt.membership.bad_unlisted,
        "membership_failures": rt.membership.failures}


def admin_handler(rt: Router):
    """The admin listener's handler: GET /metrics and GET /_vigil/status (with
    `admin.tokens_file`, 401 without one of its bearer tokens), the status page
    GET /_vigil/ui (vigil.ui: it holds no data; its script fetches the status
    with the token), 404 else."""
    import json

    from vigil import ui

    from prometheus_client import CONTENT_TYPE_LATEST

    from vigil.web import bearer_holder

    tokens = rt.cfg.admin_tokens

    async def handle(req, reply) -> None:
        if req.method == "GET" and req.path in ("/_vigil/ui", "/_vigil/ui.js"):  # holds no data: open
            page = req.path == "/_vigil/ui"
            reply.whole(200, [("Content-Type", "text/html; charset=utf-8" if page else "text/javascript"),
                              *ui.SECURITY_HEADERS], ui.HTML if page else ui.SCRIPT)
        elif tokens and bearer_holder(req.header("Authorization"), tokens) is None:
            reply.whole(401, [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                        b"needs Authorization: Bearer <token> (admin.tokens_file)\n")
        elif req.method == "GET" and req.path == "/metrics":
            reply.whole(200, [("Content-Type", CONTENT_TYPE_LATEST)], rt.metrics.render())
        elif req.method == "GET" and req.path == "/_vigil/status":
            reply.whole(200, [("Content-Type", "application/json")],
                        json.dumps(status_document(rt)).encode())
        else:
            reply.whole(404, [("Content-Type", "text/plain")], b"GET /metrics, /_vigil/status or /_vigil/ui\n")
    return handle
