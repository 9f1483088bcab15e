"""Router: the HTTP front door (passes any path through).

Per request: read the body (needed for retries), pick the eligible backend
with the fewest outstanding requests, forward, and on a node failure
(connect error, reset before the response, 502/503/504, per-attempt timeout,
or the node being ejected while the attempt waits) retry a safe request on a
different node within the retry budget. Responses stream back without
buffering once their headers arrived; a request whose response has started
streaming can no longer be retried. `X-Vigil-Node` names the node that
answered. With no eligible node: 503 at once, with the reasons.

The router's own endpoints: GET /metrics (Prometheus), GET /_vigil/status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import aiohttp
from aiohttp import web

from vigil.clock import Clock, SystemClock
from vigil.core.routing import RETRYABLE_STATUS, Backend, RetryPolicy, RoutingTable
from vigil.router.config import RouterConfig
from vigil.router.idempotency import IdempotencyCache, Result
from vigil.router.metrics import RouterMetrics
from vigil.store.base import Store

log = logging.getLogger(__name__)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length", "host"}


class AttemptFailed(Exception):
    def __init__(self, cause: str, status: int | None = None):
        super().__init__(cause)
        self.cause, self.status = cause, status


class Router:
    def __init__(self, cfg: RouterConfig, store: Store, clock: Clock | None = None):
        from vigil.router.membership import Membership

        self.cfg, self.clock = cfg, clock or SystemClock()
        self.table = RoutingTable()
        r = cfg.retry
        self.policy = RetryPolicy(max_attempts=r.max_attempts, budget_ratio=r.budget_ratio,
                                  idempotent_paths=r.idempotent_paths)
        self.cache = IdempotencyCache(r.idempotency_window)
        self.metrics = RouterMetrics()
        self.membership = Membership(cfg, store, self.table, self.clock, self.eject, self._on_change)
        self.inflight: dict[str, set[asyncio.Task]] = defaultdict(set)
        self.app = web.Application(client_max_size=cfg.max_body)
        self.app.add_routes([web.get("/metrics", self.metrics_handler),
                             web.get("/_vigil/status", self.status_handler),
                             web.route("*", "/{tail:.*}", self.handle)])
        self._http: aiohttp.ClientSession | None = None
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=r.connect_timeout)
        self._cancel_cause: dict[asyncio.Task, str] = {}

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                           auto_decompress=False)
        await self.membership.start()

    async def stop(self) -> None:
        await self.membership.stop()
        if self._http:
            await self._http.close()

    # -- membership callbacks ------------------------------------------------------
    def eject(self, name: str, cause: str) -> None:
        """Abandon the attempts waiting on `name`; they are retried elsewhere."""
        for task in list(self.inflight.get(name, ())):
            self._abandon(task, f"abandoned: node {name} ejected ({cause})")

    def _on_change(self, name: str, state: str) -> None:
        log.info("backend %s: %s", name, state)
        self.metrics.state_changes[(name, "eligible" if state == "eligible" else "ineligible")] += 1

    # -- the data path -------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body larger than {self.cfg.max_body} bytes")
        key = request.headers.get("Idempotency-Key")
        if key:
            return await self._keyed(request, body, key, t0)
        resp = await self._route(request, body, t0, buffer=False)
        return resp

    async def _keyed(self, request: web.Request, body: bytes, key: str, t0: float) -> web.StreamResponse:
        prior = self.cache.begin(key, self.clock.now())
        if isinstance(prior, Result):
            return _replay(prior)
        if prior is not None:
            try:
                return _replay(await prior)
            except AttemptFailed as e:
                return _error(503, f"the first request with this Idempotency-Key failed: {e.cause}")
        resp = await self._route(request, body, t0, buffer=True)
        if isinstance(resp, web.Response) and resp.status < 500:
            self.cache.finish(key, Result(resp.status, tuple(resp.headers.items()), resp.body or b""),
                              self.clock.now())
        else:
            self.cache.abandon(key, AttemptFailed(f"HTTP {resp.status}"))
        return resp

    async def _route(self, request: web.Request, body: bytes, t0: float,
                     buffer: bool) -> web.StreamResponse:
        safe = self.policy.safe(request.method, request.path, request.headers)
        self.policy.request_started()
        tried: set[str] = set()
        last = "no attempt"
        while True:
            backend = self.table.choose(self.clock.now(), frozenset(tried))
            if backend is None:
                why = self.table.none_reason(self.clock.now()) if not tried else f"last failure: {last}"
                self.metrics.finished(503, time.monotonic() - t0, len(tried))
                return _error(503, f"no ready inference node can take this request ({why})")
            tried.add(backend.name)
            try:
                upstream = await self._attempt(backend, request, body)
            except AttemptFailed as e:
                last = f"{backend.name}: {e.cause}"
                self.table.failed(backend.name, self.clock.now())
                if e.status is None or e.status in RETRYABLE_STATUS:
                    self.eject_if_dead(backend, e)
                if self.policy.may_retry(len(tried), safe, e.status):
                    self.metrics.retries += 1
                    continue
                self.metrics.finished(e.status or 502, time.monotonic() - t0, len(tried))
                return _error(e.status or 502, f"{last} (not retried: "
                              f"{'unsafe request' if not safe else 'retry limit or budget'})")
            return await self._respond(request, backend, upstream, t0, len(tried), buffer)

    def eject_if_dead(self, backend: Backend, e: AttemptFailed) -> None:
        # One attempt that timed out means the others waiting there are stuck too.
        if "timed out" in e.cause:
            self.eject(backend.name, e.cause)

    async def _attempt(self, b: Backend, request: web.Request, body: bytes) -> aiohttp.ClientResponse:
        """One attempt, as a task that `eject` or the per-try timer may cancel."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._send(b, request, body))
        timeout = self.cfg.retry.per_try_timeout
        timer = loop.call_later(timeout, self._abandon, task,
                                f"no response within {timeout:g} s (timed out)")
        self.inflight[b.name].add(task)
        b.outstanding += 1
        try:
            return await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the client went away: stop the attempt too
                task.cancel()
                raise
            raise AttemptFailed(self._cancel_cause.pop(task, "abandoned")) from None
        finally:
            timer.cancel()
            b.outstanding -= 1
            self.inflight[b.name].discard(task)

    def _abandon(self, task: asyncio.Task, cause: str) -> None:
        if not task.done():
            self._cancel_cause[task] = cause
            task.cancel()

    async def _send(self, b: Backend, request: web.Request, body: bytes) -> aiohttp.ClientResponse:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            resp = await self._http.request(request.method, b.url + request.path_qs, data=body or None,
                                            headers=headers, allow_redirects=False,
                                            timeout=self._client_timeout)
        except (aiohttp.ClientError, OSError) as e:
            raise AttemptFailed(f"{type(e).__name__}: {e}") from None
        if resp.status in RETRYABLE_STATUS:
            detail = (await resp.read())[:200].decode(errors="replace")
            resp.release()
            raise AttemptFailed(f"HTTP {resp.status} {detail}", resp.status)
        return resp

    async def _respond(self, request: web.Request, b: Backend, upstream: aiohttp.ClientResponse,
                       t0: float, attempts: int, buffer: bool) -> web.StreamResponse:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Vigil-Node"] = b.name
        headers["X-Vigil-Attempts"] = str(attempts)
        try:
            if buffer or _small(upstream):
                data = await upstream.read()
                self._done(b, upstream.status, t0, attempts)
                return web.Response(status=upstream.status, body=data, headers=headers)
            out = web.StreamResponse(status=upstream.status, headers=headers)
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            self._done(b, upstream.status, t0, attempts)
            return out
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            # The response already started: it cannot be retried. Cut the client off
            # rather than pretend the truncated body is whole.
            self.table.failed(b.name, self.clock.now())
            self.metrics.finished(502, time.monotonic() - t0, attempts)
            log.warning("stream from %s broke after headers: %s", b.name, e)
            if request.transport:
                request.transport.close()
            raise
        finally:
            upstream.release()

    def _done(self, b: Backend, status: int, t0: float, attempts: int) -> None:
        self.table.succeeded(b.name) if status < 500 else self.table.failed(b.name, self.clock.now())
        self.metrics.finished(status, time.monotonic() - t0, attempts)

    # -- the router's own endpoints ------------------------------------------------
    async def metrics_handler(self, _: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(self.table, self.clock.now(), self.policy),
                            content_type="text/plain")

    async def status_handler(self, _: web.Request) -> web.Response:
        now = self.clock.now()
        return web.json_response({
            "etcd_ok": self.membership.etcd_ok, "retries": self.policy.retries,
            "retry_budget": round(self.policy.tokens, 2), "idempotent_replays": self.cache.replays,
            "backends": {b.name: {"url": b.url, "ready": b.ready, "alive": b.alive, "state": b.state,
                                  "outstanding": b.outstanding, "served": b.served,
                                  "failures": b.failures, "eligible": b.why_not(now) is None,
                                  "why_not": b.why_not(now)}
                         for b in self.table.backends.values()},
            "heartbeat": dict(self.membership.receiver.counters)})


def _small(resp: aiohttp.ClientResponse) -> bool:
    """A sized, non-streaming answer is cheaper to pass whole; streams pass chunk by chunk."""
    length = resp.content_length
    return (length is not None and length <= 1 << 20
            and not resp.headers.get("Content-Type", "").startswith("text/event-stream"))


def _error(status: int, message: str) -> web.Response:
    kind = "service_unavailable" if status == 503 else "router_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                        "code": status}}, status=status)


def _replay(r: Result) -> web.Response:
    headers = {k: v for k, v in r.headers if k.lower() not in HOP_BY_HOP}
    headers["X-Vigil-Idempotent-Replay"] = "true"
    return web.Response(status=r.status, body=r.body, headers=headers)


