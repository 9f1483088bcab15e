"""The agent's HTTP API, for load balancers (as they check Patroni) and for
`vigil status`.

GET /health   200 when this node's health verdict is healthy
GET /leader   200 only while this node holds leadership with an unexpired
              lease, judged with a fresh clock reading on every request
GET /standby  200 on a healthy node that is not the leader
GET /ready    200 when this node's inference server is ready
GET /status   JSON: role, token, lease, decision, peers, counters
GET /metrics  Prometheus text format
Every answer is JSON (but /metrics) and carries the reason in its body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigil.errors import VigilError

if TYPE_CHECKING:
    from vigil.agent.daemon import Agent

log = logging.getLogger(__name__)


class AgentApi:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.app = web.Application()
        self.app.add_routes([web.get("/health", self.health), web.get("/leader", self.leader),
                             web.get("/standby", self.standby), web.get("/ready", self.ready),
                             web.get("/status", self.status), web.get("/metrics", self.metrics)])
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        cfg = self.agent.cfg
        site = web.TCPSite(self._runner, cfg.api_host, cfg.api_port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise VigilError(f"cannot listen on {cfg.api_url}: {e.strerror}; is another agent "
                             "running, or set api.port to a free port") from None

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def health(self, _: web.Request) -> web.Response:
        a = self.agent
        body = {"node": a.cfg.node, "healthy": a.healthy, "reasons": list(a.health_reasons)}
        return web.json_response(body, status=200 if a.healthy else 503)

    async def leader(self, _: web.Request) -> web.Response:
        a = self.agent
        now = a.clock.now()
        ok = a.role.is_leader(now)
        body = {"node": a.cfg.node, "leader": ok, "token": a.role.token if ok else None,
                "valid_for": round(a.role.remaining(now), 3)}
        return web.json_response(body, status=200 if ok else 503)

    async def standby(self, _: web.Request) -> web.Response:
        a = self.agent
        ok = a.healthy and a.session_ok() and not a.is_leader()
        return web.json_response({"node": a.cfg.node, "standby": ok}, status=200 if ok else 503)

    async def ready(self, _: web.Request) -> web.Response:
        a = self.agent
        if a.inference is None:
            return web.json_response({"node": a.cfg.node, "ready": False,
                                      "reason": "no inference server is configured on this node"},
                                     status=503)
        body = {"node": a.cfg.node, **a.inference.describe()}
        return web.json_response(body, status=200 if a.inference.ready else 503)

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(status_document(self.agent))

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=metrics_text(self.agent), content_type="text/plain")


def status_document(a: "Agent") -> dict[str, Any]:
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
    s = a.session
    return {
        "node": a.cfg.node, "cluster": a.cfg.cluster, "incarnation": a.incarnation,
        "role": "leader" if a.is_leader() else "follower", "token": a.role.token or None,
        "leader_valid_for": round(a.role.remaining(now), 3),
        "healthy": a.healthy, "reasons": list(a.health_reasons),
        "session": {"ok": a.session_ok(), "lease": f"{s.lease_id:x}" if s else None,
                    "expires_in": round(s.expires_by() - now, 3) if s else None,
                    "keepalive_failures": s.failures if s else 0},
        "decision": str(a.reconciler.last), "cycles": a.reconciler.cycles,
        "inference": a.inference.describe() if a.inference else None,
        "watchdog": a.watchdog.describe(),
        "peers": peers,
        "heartbeat": {"sent": a.heartbeats.transport.sent,
                      "send_errors": a.heartbeats.transport.send_errors,
                      "received": dict(a.heartbeats.receiver.counters),
                      "local_pauses": a.heartbeats.guard.pauses,
                      "longest_local_pause_ms": round(a.heartbeats.guard.longest * 1000, 1)},
        "events": {"written": a.events.written, "pending": a.events.pending,
                   "dropped": a.events.dropped},
    }


def metrics_text(a: "Agent") -> str:
    now = a.clock.now()
    node = a.cfg.node
    lines = [
        "# HELP vigil_leader 1 while this node holds leadership with a valid lease.",
        "# TYPE vigil_leader gauge", f'vigil_leader{{node="{node}"}} {int(a.is_leader())}',
        "# HELP vigil_fencing_token Fencing token of this node's leadership (0 if none).",
        "# TYPE vigil_fencing_token gauge", f'vigil_fencing_token{{node="{node}"}} {a.role.token}',
        "# HELP vigil_healthy 1 when this node's health verdict is healthy.",
        "# TYPE vigil_healthy gauge", f'vigil_healthy{{node="{node}"}} {int(a.healthy)}',
        "# HELP vigil_session_ok 1 while this node holds a live etcd lease.",
        "# TYPE vigil_session_ok gauge", f'vigil_session_ok{{node="{node}"}} {int(a.session_ok())}',
        "# HELP vigil_heartbeats_sent_total Heartbeat packets sent.",
        "# TYPE vigil_heartbeats_sent_total counter",
        f'vigil_heartbeats_sent_total{{node="{node}"}} {a.heartbeats.transport.sent}',
        "# HELP vigil_heartbeats_received_total Heartbeat packets received, by verdict.",
        "# TYPE vigil_heartbeats_received_total counter",
    ]
    for verdict, n in sorted(a.heartbeats.receiver.counters.items()):
        lines.append(f'vigil_heartbeats_received_total{{node="{node}",verdict="{verdict}"}} {n}')
    lines += ["# HELP vigil_peer_phi Phi suspicion level of each peer.", "# TYPE vigil_peer_phi gauge"]
    for name, p in a.heartbeats.peers.peers.items():
        lines.append(f'vigil_peer_phi{{node="{node}",peer="{name}"}} {p.detector.phi(now):.3f}')
    lines += ["# HELP vigil_peer_alive 1 while the peer is not suspected.",
              "# TYPE vigil_peer_alive gauge"]
    for name, p in a.heartbeats.peers.peers.items():
        lines.append(f'vigil_peer_alive{{node="{node}",peer="{name}"}} {int(p.state == "alive")}')
    lines += ["# HELP vigil_local_pauses_total Times this agent's own loop ran late.",
              "# TYPE vigil_local_pauses_total counter",
              f'vigil_local_pauses_total{{node="{node}"}} {a.heartbeats.guard.pauses}']
    return "\n".join(lines) + "\n"
