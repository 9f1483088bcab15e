"""Router: the HTTP front door (passes any path through).

Per request: read the body (needed for retries), pick the eligible backend
with room under its adaptive concurrency limit and the fewest outstanding
requests, forward, and on a node failure (connect error, reset before the
answer, 502/503/504, no first byte within `per_try_timeout`, or the node
being ejected while the attempt waits) retry a safe request on a different
node within the retry budget. An engine that sheds (429) never executed the
request: it goes to another node with room, whatever its method.

Overload is not failure (vigil.core.admission): when every eligible node is
at its limit the request waits in the router's queue if that queue is
expected to drain within `queue_wait`, else it is shed at once with 429 and
`Retry-After` (plus `retry-after-ms`, which OpenAI clients honour). A 503
means no node can serve at all, and says why.

Deadlines fit inference: the first byte of the answer (headers and first
body chunk) within `per_try_timeout`, then no silence between chunks longer
than `idle_timeout`; never a bound on total duration. A stream that stalls
before its first chunk is retried like a timeout; after bytes reached the
client it is cut (the client sees a truncated answer, never a fake end).

`X-Vigil-Node` names the node that answered. The router's own endpoints:
GET /metrics (Prometheus), GET /_vigil/status.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from vigil.clock import Clock, SystemClock
from vigil.core.admission import Admission, NodeLimit, Shed
from vigil.core.routing import RETRYABLE_STATUS, Backend, RetryPolicy, RoutingTable
from vigil.router.config import RouterConfig
from vigil.router.idempotency import IdempotencyCache, Mismatch, Result, fingerprint
from vigil.router.metrics import RouterMetrics, status_document
from vigil.store.base import Store

log = logging.getLogger(__name__)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length", "host"}
WHOLE_BODY_MAX = 1 << 20
UNKNOWN_OUTCOME = frozenset({"reset", "first_byte", "ejected"})  # sent: it may have run
OUTCOME_HEADER = "X-Vigil-Outcome"


class AttemptFailed(Exception):
    """One attempt got no usable answer. `kind`: connect | reset | status |
    first_byte (no first byte in time) | ejected | overloaded (the engine shed it)."""

    def __init__(self, kind: str, cause: str, status: int | None = None,
                 answer: "Result | None" = None):
        super().__init__(cause)
        self.kind, self.cause, self.status, self.answer = kind, cause, status, answer


@dataclass
class Answer:
    resp: aiohttp.ClientResponse
    head: bytes  # the whole body when `whole`, else the first chunk
    whole: bool


class Router:
    def __init__(self, cfg: RouterConfig, store: Store, clock: Clock | None = None):
        from vigil.router.membership import Membership

        self.cfg, self.clock = cfg, clock or SystemClock()
        a = cfg.admission
        self.table = RoutingTable(panic_threshold=a.panic_threshold, new_limit=NodeLimit(
            a.initial_limit, a.min_limit, a.max_limit, a.tolerance,
            queue_budget=0.8 * cfg.retry.per_try_timeout))
        self.admission = Admission(a.queue_wait, a.max_queue)
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.shed_late = 0
        r = cfg.retry
        self.policy = RetryPolicy(max_attempts=r.max_attempts, budget_ratio=r.budget_ratio,
                                  idempotent_paths=r.idempotent_paths)
        self.cache = IdempotencyCache(r.idempotency_window)
        self.metrics = RouterMetrics()
        self.metrics.attach(self)
        self.membership = Membership(cfg, store, self.table, self.clock, self.eject, self._on_change)
        self.inflight: dict[str, set[asyncio.Task]] = defaultdict(set)
        self.app = web.Application(client_max_size=cfg.max_body)
        self.app.add_routes([web.get("/metrics", self.metrics_handler),
                             web.get("/_vigil/status", self.status_handler),
                             web.route("*", "/{tail:.*}", self.handle)])
        self._http: aiohttp.ClientSession | None = None
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=r.connect_timeout)
        self._cancel_cause: dict[asyncio.Task, tuple[str, str]] = {}

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
            self._abandon(task, "ejected", f"abandoned: node {name} ejected ({cause})")

    def _on_change(self, name: str, state: str) -> None:
        log.info("backend %s: %s", name, state)
        self.metrics.state_changes.labels(name, "eligible" if state == "eligible" else "ineligible").inc()
        self._wake(len(self.waiters))  # a node back in rotation brings room

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
        return await self._route(request, body, t0, buffer=False)

    async def _keyed(self, request: web.Request, body: bytes, key: str, t0: float) -> web.StreamResponse:
        """At most once per key (vigil.router.idempotency): a duplicate replays the
        first answer or waits for it; the key is settled on every path."""
        prior = self.cache.begin(key, fingerprint(request.method, request.path_qs, body), self.clock.now())
        if isinstance(prior, Mismatch):
            return _error(422, f"Idempotency-Key {key!r} was first used with another request "
                               f"({prior.first} with a different body); use a new key for a new request")
        if isinstance(prior, Result):
            return _replay(prior)
        if prior is not None:
            try:
                return _replay(await prior)
            except AttemptFailed as e:
                return _error(503, f"the first request with this Idempotency-Key failed: {e.cause}")
        resp: web.StreamResponse | None = None
        try:
            resp = await self._route(request, body, t0, buffer=True)
        finally:
            self._settle(key, resp)
        return resp

    def _settle(self, key: str, resp: web.StreamResponse | None) -> None:
        if not isinstance(resp, web.Response):
            self.cache.abandon(key, AttemptFailed("reset", "the first request got no answer"))
            return
        result = Result(resp.status, tuple(resp.headers.items()), resp.body or b"")
        if resp.headers.get(OUTCOME_HEADER) == "unknown":
            # It may have run: keep the failure so a client's retry cannot run it again.
            self.cache.finish(key, result, self.clock.now(), keep=True)
        else:
            self.cache.finish(key, result, self.clock.now())

    async def _route(self, request: web.Request, body: bytes, t0: float,
                     buffer: bool) -> web.StreamResponse:
        safe = self.policy.safe(request.method, request.path, request.headers)
        self.policy.request_started()
        tried: set[str] = set()
        attempts, last, full, admitted, maybe_ran = 0, "no attempt", None, False, False
        while True:
            now = self.clock.now()
            pool = self.table.eligible(now, frozenset(tried))
            if not pool:
                if full is not None:  # every node we could try shed it: the engines are full
                    return self._shed(t0, "engine_full", full)
                why = self.table.none_reason(now) if not tried else f"last failure: {last}"
                self.metrics.finished(503, time.monotonic() - t0)
                return _error(503, f"no ready inference node can take this request ({why})")
            # First come, first served: while others wait, a newcomer queues behind them.
            backend = None if self.waiters and not admitted else self.table.choose(now, pool=pool)
            if backend is None:
                shed = await self._wait_for_room(pool, admitted)
                if shed is not None:
                    return self._shed(t0, "queue_full" if shed.reason else "queue_timeout", shed)
                admitted = True
                continue
            tried.add(backend.name)
            attempts += 1
            try:
                answer = await self._attempt(backend, request, body)
            except AttemptFailed as e:
                last = f"{backend.name}: {e.cause}"
                log.info("attempt %d on %s failed (%s): %s", attempts, backend.name, e.kind, e.cause)
                if e.kind == "overloaded":
                    full = self._engine_full(backend, e)
                    if attempts < self.policy.max_attempts:
                        continue
                    return self._shed(t0, "engine_full", full)
                self._attempt_failed(backend, e)
                maybe_ran = maybe_ran or e.kind in UNKNOWN_OUTCOME
                # Never received (no connection): safe to send elsewhere, whatever the method.
                if self.policy.may_retry(attempts, safe or e.kind == "connect", e.status):
                    self.metrics.retries.inc()
                    continue
                code = e.status or (504 if e.kind == "first_byte" else 502)
                self.metrics.finished(code, time.monotonic() - t0)
                resp = _error(code, f"{last} (not retried: "
                              f"{'unsafe request' if not safe else 'retry limit or budget'})")
                if maybe_ran:
                    resp.headers[OUTCOME_HEADER] = "unknown"
                return resp
            return await self._respond(request, backend, answer, t0, attempts, buffer)

    def _attempt_failed(self, b: Backend, e: AttemptFailed) -> None:
        if e.kind == "first_byte":
            # Slow is not hung: whether the engine still makes progress is its agent's
            # verdict (vigil.core.engine), which reaches us as readiness within a second,
            # and whether the node lives is our heartbeat detector's. A deadline missed
            # behind a deep queue only moves this request; the node keeps its traffic.
            return
        self.table.failed(b.name, self.clock.now())

    def _engine_full(self, b: Backend, e: AttemptFailed) -> Shed:
        b.limit.overloaded(self.clock.now())
        b.shed_by_engine += 1
        return Shed(max(0.05, b.limit.latency), f"{b.name} is full: {e.cause}")

    async def _wait_for_room(self, pool: list[Backend], admitted: bool) -> Shed | None:
        """Wait for a slot on any eligible node; a Shed if not admitted to the queue
        (reason set) or not served within twice the queue wait (reason empty). A
        request woken before that keeps its place at the head of the queue."""
        if not admitted:
            slots = sum(b.limit.slots for b in pool)
            latency = max((b.limit.latency for b in pool), default=0.0)
            shed = self.admission.may_wait(len(self.waiters), slots, latency)
            if shed is not None:
                return shed
        fut = asyncio.get_running_loop().create_future()
        self.waiters.appendleft(fut) if admitted else self.waiters.append(fut)
        if any(b.has_room() for b in pool):  # room nobody was woken for: the head takes it
            self._wake(1)
        try:
            await asyncio.wait_for(fut, 2 * self.admission.queue_wait)
        except asyncio.TimeoutError:
            self.shed_late += 1
            return Shed(self.admission.queue_wait, "")
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass
        return None

    def _wake(self, n: int = 1) -> None:
        for fut in list(self.waiters):
            if n <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                self.waiters.remove(fut)
                n -= 1

    def _shed(self, t0: float, reason: str, shed: Shed) -> web.Response:
        elapsed = time.monotonic() - t0
        self.metrics.shed.labels(reason).inc()
        self.metrics.shed_latency.observe(elapsed)
        self.metrics.finished(429, elapsed)
        retry = max(0.05, shed.retry_after)
        message = {"queue_timeout": f"waited {2 * self.admission.queue_wait:g} s for a free slot",
                   "engine_full": shed.reason}.get(reason, shed.reason)
        return web.json_response(
            {"error": {"message": f"overloaded, not failed: {message}; retry after {retry:.2f} s",
                       "type": "rate_limit_error", "param": None, "code": "overloaded"}},
            status=429, headers={"Retry-After": str(max(1, math.ceil(retry))),
                                 "retry-after-ms": str(int(retry * 1000))})

    async def _attempt(self, b: Backend, request: web.Request, body: bytes) -> Answer:
        """One attempt up to the first byte, as a task that `eject` or the timer may cancel."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._send(b, request, body))
        timeout = self.cfg.retry.per_try_timeout
        timer = loop.call_later(timeout, self._abandon, task, "first_byte",
                                f"no first byte within {timeout:g} s (timed out)")
        self.inflight[b.name].add(task)
        b.outstanding += 1
        started = self.clock.now()
        done = True
        try:
            answer = await task
            done = answer.whole
            return answer
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the client went away: stop the attempt too
                task.cancel()
                raise
            kind, cause = self._cancel_cause.pop(task, ("ejected", "abandoned"))
            raise AttemptFailed(kind, cause) from None
        finally:
            timer.cancel()
            self.inflight[b.name].discard(task)
            if task.done() and not task.cancelled() and task.exception() is None:
                self._observe(b, task.result(), started)
            if done:
                self._release(b)

    def _observe(self, b: Backend, answer: Answer, started: float) -> None:
        h = answer.resp.headers
        try:
            queue_s = float(h["X-Vigil-Queue-Ms"]) / 1000
            service_s = float(h["X-Vigil-Service-Ms"]) / 1000
        except (KeyError, ValueError):
            queue_s = service_s = None
        depth = h.get("X-Vigil-Queue-Depth", "")
        if depth.isdigit():
            b.engine_queue = int(depth)
        b.limit.sample(self.clock.now(), self.clock.now() - started, queue_s, service_s, b.outstanding)

    def _release(self, b: Backend) -> None:
        b.outstanding -= 1
        self._wake(1)

    def _abandon(self, task: asyncio.Task, kind: str, cause: str) -> None:
        if not task.done():
            self._cancel_cause[task] = (kind, cause)
            task.cancel()

    async def _send(self, b: Backend, request: web.Request, body: bytes) -> Answer:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            resp = await self._http.request(request.method, b.url + request.path_qs, data=body or None,
                                            headers=headers, allow_redirects=False,
                                            timeout=self._client_timeout)
        except aiohttp.ClientConnectorError as e:
            raise AttemptFailed("connect", f"{type(e).__name__}: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise AttemptFailed("reset", f"{type(e).__name__}: {e}") from None
        try:
            if resp.status in RETRYABLE_STATUS or resp.status == 429:
                detail = (await resp.read())[:200].decode(errors="replace")
                resp.release()
                kind = "overloaded" if resp.status == 429 else "status"
                raise AttemptFailed(kind, f"HTTP {resp.status} {detail}", resp.status)
            if _small(resp):
                return Answer(resp, await resp.read(), True)
            return Answer(resp, await resp.content.readany(), False)
        except (aiohttp.ClientError, OSError) as e:
            resp.release()
            raise AttemptFailed("reset", f"{type(e).__name__} before the first byte: {e}") from None

    async def _respond(self, request: web.Request, b: Backend, answer: Answer,
                       t0: float, attempts: int, buffer: bool) -> web.StreamResponse:
        upstream = answer.resp
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Vigil-Node"] = b.name
        headers["X-Vigil-Attempts"] = str(attempts)
        try:
            if answer.whole or buffer:
                data = answer.head if answer.whole else answer.head + await self._rest(upstream)
                self._done(b, upstream.status, t0)
                return web.Response(status=upstream.status, body=data, headers=headers)
            out = web.StreamResponse(status=upstream.status, headers=headers)
            await out.prepare(request)
            chunk = answer.head
            while chunk:
                await out.write(chunk)
                async with asyncio.timeout(self.cfg.retry.idle_timeout):
                    chunk = await upstream.content.readany()
            await out.write_eof()
            self._done(b, upstream.status, t0)
            return out
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            # The answer already started: it cannot be retried. Cut the client off
            # rather than pretend the truncated body is whole.
            why = (f"silent for {self.cfg.retry.idle_timeout:g} s" if isinstance(e, TimeoutError)
                   else f"{type(e).__name__}: {e}")
            if not isinstance(e, TimeoutError):
                self.table.failed(b.name, self.clock.now())
            self.metrics.finished(502, time.monotonic() - t0)
            log.warning("answer from %s cut after it started: %s", b.name, why)
            if request.transport:
                request.transport.close()
            if buffer:
                resp = _error(502, f"{b.name}: answer broke after it started ({why})")
                resp.headers[OUTCOME_HEADER] = "unknown"  # it ran; its answer is lost
                return resp
            raise
        finally:
            upstream.release()
            if not answer.whole:
                self._release(b)

    async def _rest(self, upstream: aiohttp.ClientResponse) -> bytes:
        parts = []
        while True:
            async with asyncio.timeout(self.cfg.retry.idle_timeout):
                chunk = await upstream.content.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def _done(self, b: Backend, status: int, t0: float) -> None:
        if status < 500:
            self.table.succeeded(b.name, self.clock.now())
        else:
            self.table.failed(b.name, self.clock.now())
        self.metrics.finished(status, time.monotonic() - t0)

    # -- the router's own endpoints ------------------------------------------------
    async def metrics_handler(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def status_handler(self, _: web.Request) -> web.Response:
        return web.json_response(status_document(self))


def _small(resp: aiohttp.ClientResponse) -> bool:
    """A sized, non-streaming answer is cheaper to pass whole; streams pass chunk by chunk."""
    length = resp.content_length
    return (length is not None and length <= WHOLE_BODY_MAX
            and not resp.headers.get("Content-Type", "").startswith("text/event-stream"))


def _error(status: int, message: str) -> web.Response:
    kind = "service_unavailable" if status == 503 else "router_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                        "code": status}}, status=status)


def _replay(r: Result) -> web.Response:
    if r.body is None:
        return _error(409, "the request with this Idempotency-Key was executed, but its answer was too "
                           "large to keep for a replay; use a new key for a new request")
    headers = {k: v for k, v in r.headers if k.lower() not in HOP_BY_HOP}
    headers["X-Vigil-Idempotent-Replay"] = "true"
    return web.Response(status=r.status, body=r.body, headers=headers)
