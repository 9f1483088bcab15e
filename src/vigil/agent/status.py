"""The agent describing itself: the /status document and the /metrics text.

Both read the agent's parts at request time and change nothing. `a` is the
running Agent, duck-typed (this module does not import it: the agent imports
this one).
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vigil import __version__
from vigil.net.wire import REJECT_REASONS


def status_document(a: Any) -> dict[str, Any]:
    now = a.clock.now()
    peers = {}
    for name, p in a.heartbeats.peers.peers.items():
        age = p.heartbeat_age(now)
        peers[name] = {"state": p.state, "phi": round(p.detector.phi(now), 2),
                       "heartbeat_age": None if age is None else round(age, 3),
                       "incarnation": p.incarnation, "role": p.role, "health": p.health,
                       "links": {link: round(now - t, 3) for link, t in p.links.items()},
                       "gaps": {"count": p.gaps.total, "largest": round(p.gaps.largest, 4),
                                "over": p.gaps.over()}}
    s = a.registration.session
    return {
        "node": a.cfg.node, "cluster": a.cfg.cluster, "incarnation": a.incarnation, "version": __version__,
        "role": "leader" if a.is_leader() else "follower", "token": a.role.token or None,
        "leader_valid_for": round(a.role.remaining(now), 3),
        "healthy": a.healthy, "reasons": list(a.health_reasons),
        "session": {"ok": a.session_ok(), "lease": f"{s.lease_id:x}" if s else None,
                    "expires_in": round(s.expires_by() - now, 3) if s else None,
                    "keepalive_failures": s.failures if s else 0},
        "decision": str(a.reconciler.last), "cycles": a.reconciler.cycles,
        "inference": a.inference.describe() if a.inference else None,
        "watchdog": a.watchdog.describe(),
        "vips": a.vips.describe() if a.cfg.vips else None,
        "peers": peers,
        "heartbeat": {"sent": a.heartbeats.transport.sent, "sealed": a.heartbeats.transport.sealed,
                      "send_errors": a.heartbeats.transport.send_errors,
                      "received": dict(a.heartbeats.receiver.counters),
                      "signing_key": a.cfg.keys.signing.send if a.cfg.keys.signing else None,
                      "keyring": {n: sorted(ids) for n, ids in a.heartbeats.receiver.ring.members.items()},
                      "clock_skew": {n: round(x, 4) for n, x in a.heartbeats.receiver.skew.items()},
                      "local_pauses": a.heartbeats.watch.guard.pauses,
                      "local_health": a.heartbeats.watch.local_health,
                      "longest_local_pause_ms": round(a.heartbeats.watch.guard.longest * 1000, 1),
                      "realtime": ({**a.pacer.describe(), "withheld": a.heartbeats.withheld}
                                   if a.pacer else None)},
        "events": {"written": a.events.written, "pending": a.events.pending,
                   "dropped": a.events.dropped},
    }


def metrics_text(a: Any) -> bytes:
    """Prometheus exposition of the agent's state, read at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(a))
    return generate_latest(registry)


class _AgentCollector:
    def __init__(self, agent: Any):
        self.a = agent

    def collect(self) -> Iterator[Any]:
        a, now = self.a, self.a.clock.now()
        node = a.cfg.node
        for name, doc, value in (
                ("vigil_leader", "1 while this node holds leadership with a valid lease.", a.is_leader()),
                ("vigil_fencing_token", "Fencing token of this node's leadership (0 if none).", a.role.token),
                ("vigil_healthy", "1 when this node's health verdict is healthy.", a.healthy),
                ("vigil_session_ok", "1 while this node holds a live etcd lease.", a.session_ok())):
            g = GaugeMetricFamily(name, doc, labels=["node"])
            g.add_metric([node], float(value))
            yield g
        c = CounterMetricFamily("vigil_heartbeats_sent", "Heartbeat packets sent.", labels=["node"])
        c.add_metric([node], a.heartbeats.transport.sent)
        yield c
        c = CounterMetricFamily("vigil_heartbeats_received", "Heartbeat packets received, by verdict.",
                                labels=["node", "verdict"])
        # Every verdict from the start, at 0: a series that first appears at 3 has no
        # increase to Prometheus (VigilKeyRingMismatch reads increase(...unknown_key)).
        counts = a.heartbeats.receiver.counters
        for verdict in sorted({"accepted", "skewed", *REJECT_REASONS, *counts}):
            c.add_metric([node, verdict], counts.get(verdict, 0))
        yield c
        phi = GaugeMetricFamily("vigil_peer_phi", "Phi suspicion level of each peer.", labels=["node", "peer"])
        alive = GaugeMetricFamily("vigil_peer_alive", "1 while the peer is not suspected.",
                                  labels=["node", "peer"])
        for name, p in a.heartbeats.peers.peers.items():
            phi.add_metric([node, name], p.detector.phi(now))
            alive.add_metric([node, name], float(p.state == "alive"))
        yield phi
        yield alive
        c = CounterMetricFamily("vigil_local_pauses", "Times this agent's own loop ran late.", labels=["node"])
        c.add_metric([node], a.heartbeats.watch.guard.pauses)
        yield c
        if a.inference:
            yield from _inference_metrics(node, a.inference.describe())
        yield from _cluster_metrics(a)


VERDICTS = ("ready", "degraded", "draining", "failed")
STATES = ("active", "standby", "draining", "failed", "fenced", "maintenance", "held")


def _cluster_metrics(a: Any) -> Iterator[Any]:
    """What the alerting rules read (deploy/prometheus/vigil-rules.yml): this node's
    verdict and decided state, blocked fences, clock offsets, certificate expiry."""
    node, snap = a.cfg.node, a.snapshot
    v = GaugeMetricFamily("vigil_health_verdict", "1 for this node's published health verdict.",
                          labels=["node", "verdict"])
    for verdict in VERDICTS:
        v.add_metric([node, verdict], float(a.health.verdict.state == verdict))
    yield v
    d = GaugeMetricFamily("vigil_drain_deferred", "1 while this node's own drain waits for the drain budget.",
                          labels=["node"])
    d.add_metric([node], float(a.health.verdict.deferred))
    yield d
    st = GaugeMetricFamily("vigil_node_state", "1 for the state the leader decided for this node.",
                           labels=["node", "state"])
    mine = snap.states.get(node) if snap else None
    for state in STATES:
        st.add_metric([node, state], float(mine == state))
    yield st
    fb = GaugeMetricFamily("vigil_fence_blocked", "1 for each node whose takeover waits on a failed fence "
                           "(power it off by hand, then `vigil fence NODE --confirm-off`).", labels=["node", "target"])
    for target in sorted(snap.fence_blocked if snap else ()):
        fb.add_metric([node, target], 1.0)
    yield fb
    sk = GaugeMetricFamily("vigil_peer_clock_skew_seconds", "Each peer's clock minus ours, from its "
                           "heartbeats' send times.", labels=["node", "peer"])
    for peer, skew in sorted(a.heartbeats.receiver.skew.items()):
        sk.add_metric([node, peer], skew)
    yield sk
    ex = GaugeMetricFamily("vigil_certificate_expiry_timestamp_seconds", "When each certificate this agent "
                           "presents expires (Unix time).", labels=["node", "certificate"])
    for name, path in _certificates(a.cfg):
        expiry = _not_after(path)
        if expiry is not None:
            ex.add_metric([node, name], expiry)
    yield ex


def _certificates(cfg: Any) -> list[tuple[str, str]]:
    out = [("api", cfg.api_tls[0])] if cfg.api_tls else []
    return out + ([("etcd_client", cfg.etcd.cert_file)] if cfg.etcd.cert_file else [])


_EXPIRY: dict[tuple[str, float], float | None] = {}  # (path, mtime) -> notAfter: parsed once per file version


def _not_after(path: str) -> float | None:
    import os

    from cryptography import x509

    try:
        key = (path, os.stat(path).st_mtime)
        if key not in _EXPIRY:
            with open(path, "rb") as f:
                _EXPIRY[key] = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
        return _EXPIRY[key]
    except (OSError, ValueError):
        return None


def _inference_metrics(node: str, d: dict[str, Any]) -> Iterator[Any]:
    v = GaugeMetricFamily("vigil_inference_verdict", "1 for the engine's current verdict (busy is "
                          "ready with work pending; hung and dead are not ready).",
                          labels=["node", "verdict"])
    for verdict in ("starting", "ready", "busy", "hung", "dead", "failing"):
        v.add_metric([node, verdict], float(d["verdict"] == verdict))
    yield v
    g = GaugeMetricFamily("vigil_inference_pending", "Work pending at the engine (its own report).",
                          labels=["node"])
    g.add_metric([node], d["pending"])
    yield g
