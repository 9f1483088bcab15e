"""The agent describing itself: the /status document and the /metrics text.

Both render an AgentState: a typed view of the agent, built at request time
by the Agent (`Agent.state()`) from what its parts describe of themselves
(`HeartbeatService.state`, `Registration.state`, the `describe()` of the
inference supervisor, the watchdog and the VIPs). The renderers read the view
and nothing else: this module knows no agent part, and mypy checks that it
reads only what the view declares (tests/unit/test_types.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vigil import __version__
from vigil.core.peers import PeerState
from vigil.net.wire import REJECT_REASONS

if TYPE_CHECKING:
    from vigil.config import NodeConfig


@dataclass(frozen=True)
class SessionState:
    """This node's etcd session (Registration.state); lease and expiry are None without one."""
    ok: bool
    lease: int | None
    expires_by: float | None  # monotonic time
    failures: int  # keepalives failed in a row


@dataclass(frozen=True)
class HeartbeatState:
    """The heartbeat service: its peers' detectors and its counters (HeartbeatService.state)."""
    peers: Mapping[str, PeerState]
    sent: int
    sealed: int
    send_errors: int
    received: Mapping[str, int]  # packets by verdict
    keyring: Mapping[str, Collection[int]]  # node -> the key ids we accept from it
    skew: Mapping[str, float]  # node -> its clock minus ours
    local_pauses: int
    local_health: int
    longest_pause: float  # s
    realtime: Mapping[str, object] | None  # the heartbeat thread (vigil.net.pacer), None without one


@dataclass(frozen=True)
class AgentState:
    """What /status and /metrics show, read at one instant `now` (monotonic)."""
    now: float
    node: str
    cluster: str
    incarnation: int
    leader: bool  # holds the role with a valid lease
    token: int  # 0 if none
    leader_valid_for: float  # s
    healthy: bool
    reasons: tuple[str, ...]  # why this node may not lead
    verdict: str  # this node's published health verdict
    drain_deferred: bool
    session: SessionState
    decision: str  # the decision loop's last
    cycles: int
    inference: Mapping[str, Any] | None  # InferenceSupervisor.describe(), None without one
    watchdog: Mapping[str, object]
    vips: Mapping[str, object] | None  # None when no VIP is configured
    heartbeat: HeartbeatState
    signing_key: int | None  # the key id our heartbeats are signed with
    events: Mapping[str, int]  # written, pending, dropped
    decided: str | None  # the state the leader decided for this node (None: none yet)
    fence_blocked: Collection[str]  # nodes whose takeover waits on a failed fence
    certificates: tuple[tuple[str, str], ...]  # (name, path) of each certificate this agent presents


def certificates(cfg: NodeConfig) -> tuple[tuple[str, str], ...]:
    out = [("api", cfg.api_tls[0])] if cfg.api_tls else []
    return tuple(out + ([("etcd_client", cfg.etcd.cert_file)] if cfg.etcd.cert_file else []))


def status_document(a: AgentState) -> dict[str, Any]:
    now, s, hb = a.now, a.session, a.heartbeat
    return {
        "node": a.node, "cluster": a.cluster, "incarnation": a.incarnation, "version": __version__,
        "role": "leader" if a.leader else "follower", "token": a.token or None,
        "leader_valid_for": round(a.leader_valid_for, 3),
        "healthy": a.healthy, "reasons": list(a.reasons),
        "session": {"ok": s.ok, "lease": f"{s.lease:x}" if s.lease is not None else None,
                    "expires_in": round(s.expires_by - now, 3) if s.expires_by is not None else None,
                    "keepalive_failures": s.failures},
        "decision": a.decision, "cycles": a.cycles,
        "inference": a.inference,
        "watchdog": a.watchdog,
        "vips": a.vips,
        "peers": {name: _peer(p, now) for name, p in hb.peers.items()},
        "heartbeat": {"sent": hb.sent, "sealed": hb.sealed, "send_errors": hb.send_errors,
                      "received": dict(hb.received),
                      "signing_key": a.signing_key,
                      "keyring": {n: sorted(ids) for n, ids in hb.keyring.items()},
                      "clock_skew": {n: round(x, 4) for n, x in hb.skew.items()},
                      "local_pauses": hb.local_pauses,
                      "local_health": hb.local_health,
                      "longest_local_pause_ms": round(hb.longest_pause * 1000, 1),
                      "realtime": hb.realtime},
        "events": {"written": a.events["written"], "pending": a.events["pending"],
                   "dropped": a.events["dropped"]},
    }


def _peer(p: PeerState, now: float) -> dict[str, Any]:
    age = p.heartbeat_age(now)
    return {"state": p.state, "phi": round(p.detector.phi(now), 2),
            "heartbeat_age": None if age is None else round(age, 3),
            "incarnation": p.incarnation, "role": p.role, "health": p.health,
            "links": {link: round(now - t, 3) for link, t in p.links.items()},
            "gaps": {"count": p.gaps.total, "largest": round(p.gaps.largest, 4), "over": p.gaps.over()}}


def metrics_text(a: AgentState) -> bytes:
    """Prometheus exposition of the agent's state, read at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(a))
    return generate_latest(registry)


class _AgentCollector:
    def __init__(self, state: AgentState) -> None:
        self.a = state

    def collect(self) -> Iterator[Metric]:
        a, hb = self.a, self.a.heartbeat
        node = a.node
        for name, doc, value in (
                ("vigil_leader", "1 while this node holds leadership with a valid lease.", a.leader),
                ("vigil_fencing_token", "Fencing token of this node's leadership (0 if none).", a.token),
                ("vigil_healthy", "1 when this node's health verdict is healthy.", a.healthy),
                ("vigil_session_ok", "1 while this node holds a live etcd lease.", a.session.ok)):
            g = GaugeMetricFamily(name, doc, labels=["node"])
            g.add_metric([node], float(value))
            yield g
        c = CounterMetricFamily("vigil_heartbeats_sent", "Heartbeat packets sent.", labels=["node"])
        c.add_metric([node], hb.sent)
        yield c
        c = CounterMetricFamily("vigil_heartbeats_received", "Heartbeat packets received, by verdict.",
                                labels=["node", "verdict"])
        # Every verdict from the start, at 0: a series that first appears at 3 has no
        # increase to Prometheus (VigilKeyRingMismatch reads increase(...unknown_key)).
        counts = hb.received
        for verdict in sorted({"accepted", "skewed", *REJECT_REASONS, *counts}):
            c.add_metric([node, verdict], counts.get(verdict, 0))
        yield c
        phi = GaugeMetricFamily("vigil_peer_phi", "Phi suspicion level of each peer.", labels=["node", "peer"])
        alive = GaugeMetricFamily("vigil_peer_alive", "1 while the peer is not suspected.",
                                  labels=["node", "peer"])
        for name, p in hb.peers.items():
            phi.add_metric([node, name], p.detector.phi(a.now))
            alive.add_metric([node, name], float(p.state == "alive"))
        yield phi
        yield alive
        c = CounterMetricFamily("vigil_local_pauses", "Times this agent's own loop ran late.", labels=["node"])
        c.add_metric([node], hb.local_pauses)
        yield c
        if a.inference:
            yield from _inference_metrics(node, a.inference)
        yield from _cluster_metrics(a)


VERDICTS = ("ready", "degraded", "draining", "failed")
STATES = ("active", "standby", "draining", "failed", "fenced", "maintenance", "held")


def _cluster_metrics(a: AgentState) -> Iterator[Metric]:
    """What the alerting rules read (deploy/prometheus/vigil-rules.yml): this node's
    verdict and decided state, blocked fences, clock offsets, certificate expiry."""
    node = a.node
    v = GaugeMetricFamily("vigil_health_verdict", "1 for this node's published health verdict.",
                          labels=["node", "verdict"])
    for verdict in VERDICTS:
        v.add_metric([node, verdict], float(a.verdict == verdict))
    yield v
    d = GaugeMetricFamily("vigil_drain_deferred", "1 while this node's own drain waits for the drain budget.",
                          labels=["node"])
    d.add_metric([node], float(a.drain_deferred))
    yield d
    st = GaugeMetricFamily("vigil_node_state", "1 for the state the leader decided for this node.",
                           labels=["node", "state"])
    for state in STATES:
        st.add_metric([node, state], float(a.decided == state))
    yield st
    fb = GaugeMetricFamily("vigil_fence_blocked", "1 for each node whose takeover waits on a failed fence "
                           "(power it off by hand, then `vigil fence NODE --confirm-off`).", labels=["node", "target"])
    for target in sorted(a.fence_blocked):
        fb.add_metric([node, target], 1.0)
    yield fb
    sk = GaugeMetricFamily("vigil_peer_clock_skew_seconds", "Each peer's clock minus ours, from its "
                           "heartbeats' send times.", labels=["node", "peer"])
    for peer, skew in sorted(a.heartbeat.skew.items()):
        sk.add_metric([node, peer], skew)
    yield sk
    ex = GaugeMetricFamily("vigil_certificate_expiry_timestamp_seconds", "When each certificate this agent "
                           "presents expires (Unix time).", labels=["node", "certificate"])
    for name, path in a.certificates:
        expiry = _not_after(path)
        if expiry is not None:
            ex.add_metric([node, name], expiry)
    yield ex


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


def _inference_metrics(node: str, d: Mapping[str, Any]) -> Iterator[Metric]:
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
