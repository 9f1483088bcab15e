"""The agent's HTTP API, for load balancers (as they check Patroni) and for
`vigil status`.

GET /health   200 when this node's health verdict is healthy
GET /leader   200 only while this node holds leadership with an unexpired
              lease, judged with a fresh clock reading on every request
GET /standby  200 on a healthy node that is not the leader
GET /ready    200 when this node's inference server is ready
GET /status   JSON: role, token, lease, decision, peers, counters
GET /metrics  Prometheus text format
GET /ui       the status page (vigil.ui; holds no data), GET /ui.js its script
GET /cluster  JSON: the cluster as this agent sees it, for the page
Every answer is JSON (but /metrics and the page) and carries the reason in its body.

With `api.cert_file`/`key_file` the API speaks https; with `api.tokens_file`
/status, /metrics and /cluster need a bearer token, while the health
endpoints (and the page, which holds no data) stay open for load balancers
(as Patroni's).

The API takes the parts it answers from: the leadership (with a fresh clock
reading per request), the health reasons, the session check, the inference
supervisor, and the status document and metrics text (vigil.agent.status).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from vigil.agent.inference import InferenceSupervisor
from vigil.agent.leadership import Leadership
from vigil.config import NodeConfig
from vigil.core.health import Verdict
from vigil import ui
from vigil.errors import VigilError
from vigil.web import bearer_tokens, finish, route, server_tls

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/health", "/leader", "/standby", "/ready"})
OPEN_PATHS = HEALTH_PATHS | {"/ui", "/ui.js"}


class AgentApi:
    def __init__(self, cfg: NodeConfig, leadership: Leadership, health_reasons: Callable[[], tuple[str, ...]],
                 session_ok: Callable[[], bool], inference: InferenceSupervisor | None,
                 status: Callable[[], dict[str, Any]], metrics: Callable[[], bytes],
                 verdict: Callable[[], Verdict] = Verdict,
                 cluster: Callable[[], Awaitable[dict[str, Any]]] | None = None):
        self.cfg, self.leadership, self.health_reasons, self.session_ok = cfg, leadership, health_reasons, session_ok
        self.inference, self.status_doc, self.metrics_text = inference, status, metrics
        self.verdict, self.cluster_doc = verdict, cluster
        tokens = cfg.api_tokens
        self.app = web.Application(middlewares=[bearer_tokens(tokens, OPEN_PATHS)] if tokens else [])
        self.app.add_routes([route("GET", "/health", self.health), route("GET", "/leader", self.leader),
                             route("GET", "/standby", self.standby), route("GET", "/ready", self.ready),
                             route("GET", "/status", self.status), route("GET", "/metrics", self.metrics),
                             route("GET", "/ui", self.page), route("GET", "/ui.js", self.script),
                             route("GET", "/cluster", self.cluster)])
        finish(self.app)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        cfg = self.cfg
        tls = server_tls(*cfg.api_tls) if cfg.api_tls else None
        site = web.TCPSite(self._runner, cfg.api_host, cfg.api_port, reuse_address=True, ssl_context=tls)
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
        v = self.verdict()
        reasons = self.health_reasons() + v.reasons
        ok = not self.health_reasons() and v.may_lead
        body = {"node": self.cfg.node, "healthy": ok, "verdict": v.state, "reasons": list(reasons)}
        return web.json_response(body, status=200 if ok else 503)

    async def leader(self, _: web.Request) -> web.Response:
        lead = self.leadership
        ok = lead.is_leader()
        body = {"node": self.cfg.node, "leader": ok, "token": lead.token if ok else None,
                "valid_for": round(lead.remaining(), 3)}
        return web.json_response(body, status=200 if ok else 503)

    async def standby(self, _: web.Request) -> web.Response:
        ok = not self.health_reasons() and self.session_ok() and not self.leadership.is_leader()
        return web.json_response({"node": self.cfg.node, "standby": ok}, status=200 if ok else 503)

    async def ready(self, _: web.Request) -> web.Response:
        if self.inference is None:
            return web.json_response({"node": self.cfg.node, "ready": False,
                                      "reason": "no inference server is configured on this node"},
                                     status=503)
        v = self.verdict()
        if not v.serves:  # draining or failed: finish what is in flight, take nothing new
            return web.json_response({"node": self.cfg.node, "ready": False, "verdict": v.state,
                                      "reason": f"node {v.state}: {'; '.join(v.reasons)}"}, status=503)
        body = {"node": self.cfg.node, **self.inference.describe()}
        return web.json_response(body, status=200 if self.inference.ready else 503)

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(self.status_doc())

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text(), content_type="text/plain")

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(body=ui.HTML, content_type="text/html", charset="utf-8",
                            headers=dict(ui.SECURITY_HEADERS))

    async def script(self, _: web.Request) -> web.Response:
        return web.Response(body=ui.SCRIPT, content_type="text/javascript", charset="utf-8",
                            headers=dict(ui.SECURITY_HEADERS))

    async def cluster(self, _: web.Request) -> web.Response:
        if self.cluster_doc is None:
            return web.json_response({"error": "this agent serves no cluster view"}, status=404)
        return web.json_response(await self.cluster_doc())
