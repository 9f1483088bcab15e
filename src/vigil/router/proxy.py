"""Router: the HTTP front door (passes any path through).

Per request: pick the eligible backend with room under its adaptive
concurrency limit and the fewest outstanding requests, forward, and on a node
failure (connect error, reset before the answer, 502/503/504, no first byte
within `per_try_timeout`, or the node being ejected while the attempt waits)
retry a safe request on a different node within the retry budget. An engine
that sheds (429) never executed the request, nor did a node that refused the
connection: either goes to another node with room, whatever its method.

Overload is not failure (vigil.core.admission): when every eligible node is
at its limit an inference request (any method but GET, HEAD, OPTIONS: those
read an engine's metadata and are never queued) waits in the router's queue if that queue is
expected to drain within `queue_wait`, else it is shed at once with 429 and
`Retry-After` (plus `retry-after-ms`, which OpenAI clients honour). A 503
means no node can serve at all, and says why.

Deadlines bound silence, never total duration (docs/configuration.md): the
first byte within `per_try_timeout` (a stall before it is retried like a
timeout), then `idle_timeout` between chunks (a stall after it is cut).

The data plane is vigil.router.http1 and .upstream (httptools, no
framework). `X-Vigil-Node` names the node that answered. The router's own
endpoints, GET /metrics (Prometheus) and GET /_vigil/status, are served only
on the admin listener (`listen_admin`); limits: vigil.router.config.LimitsConfig.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vigil.clock import Clock, SystemClock
from vigil.core.admission import Admission, NodeLimit, RetryPacer
from vigil.core.request_plan import Queue, RequestPlan, Shed, Try
from vigil.core.routing import Backend, RetryPolicy, RoutingTable
from vigil.router.answers import Answered, error as _error, overloaded
from vigil.router.attempt import Answer, AttemptFailed, engine_report, retry_hint, send_attempt
from vigil.router.config import RouterConfig
from vigil.router.front_close import quiesce, sweep
from vigil.router.http1 import HOP_BY_HOP, FrontProtocol, Incoming, Listener, Reply
from vigil.router.inflight import InFlight
from vigil.router.keyed import KeyedRequests
from vigil.router.metrics import RouterMetrics, RouterState, admin_handler
from vigil.router.queue import SlotQueue
from vigil.router.tracing import Tracing, tracing_from
from vigil.router.continue_sign import client_continue, refused as continue_refused
from vigil.router.resume import ResumingStream, is_event_stream, plan_stream
from vigil.router.upstream import Upstream, UpstreamBroken, UpstreamPool
from vigil.store.base import Store

log = logging.getLogger(__name__)

OUTCOME_HEADER = "X-Vigil-Outcome"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # reads of an engine's metadata, not inference
ADMIN_MAX_CONNS = 64  # connections to the admin listener at once
QUIESCE_HOLD = 15.0  # s a quiesce lasts: the VIP has moved long before
MAX_BUFFERED = 64 << 20  # bytes of one answer held whole (an Idempotency-Key's), as the cache holds


class Router:
    def __init__(self, cfg: RouterConfig, store: Store, clock: Clock | None = None, tracing: Tracing | None = None):
        from vigil.router.membership import Membership

        self.cfg, self.clock = cfg, clock or SystemClock()
        self.tracing = tracing or tracing_from(cfg.tracing)
        a = cfg.admission
        self.table = RoutingTable(panic_threshold=a.panic_threshold, new_limit=NodeLimit(
            a.initial_limit, a.min_limit, a.max_limit, a.tolerance,
            queue_budget=0.8 * cfg.retry.per_try_timeout))
        self.admission = Admission(a.queue_wait, a.max_queue)
        # Held requests count in max_inflight: a storm held must leave room for everyone else.
        self.pacer = RetryPacer(max_held=min(1024, cfg.limits.max_inflight // 4))
        self.queue = SlotQueue(a.queue_wait)
        r = cfg.retry
        self.policy = RetryPolicy(max_attempts=r.max_attempts, budget_ratio=r.budget_ratio,
                                  idempotent_paths=r.idempotent_paths)
        self.keyed = KeyedRequests(store, cfg.cluster, cfg.name, r.idempotency_window, self.clock,
                                   lambda req, t0: self._route(req, t0, None, buffer=True))
        self.cache = self.keyed.cache
        self.metrics = RouterMetrics()
        self.metrics.attach(self.state)
        self.membership = Membership(cfg, store, self.table, self.clock, self.eject, self._on_change)
        self.flight = InFlight()  # what `eject` and the first-byte timers cancel, with a cause
        self.pool = UpstreamPool(r.connect_timeout, cfg.limits.upstream_idle_per_backend)
        self.active = 0  # requests being handled
        self._servers: list[asyncio.AbstractServer] = []
        lim = cfg.limits
        self.front = Listener(lim.max_body, lim.max_connections, lim.max_inflight, lim.max_pipeline,
                              lim.client_idle_timeout, lim.client_header_timeout, lim.client_body_rate)
        self.clients = self.front.conns
        # The admin listener faces an operator network: its own cap and sweep, so that
        # nobody who reaches it holds the file descriptors the data plane needs.
        self.admin = Listener(1024, ADMIN_MAX_CONNS, ADMIN_MAX_CONNS, 1, lim.client_idle_timeout,
                              lim.client_header_timeout, lim.client_body_rate)
        self._sweepers: list[asyncio.Task] = []
        self._lift: asyncio.TimerHandle | None = None  # the end of the current quiesce

    async def start(self) -> None:
        await self.membership.start()

    def state(self) -> RouterState:
        """What /metrics and /_vigil/status show, read now (vigil.router.metrics)."""
        p, lim = self.policy, self.cfg.limits
        return RouterState(
            now=self.clock.now(), backends=tuple(self.table.backends.values()), panicking=self.table.panicking,
            waiting=len(self.queue), shed=self.admission.shed, shed_late=self.queue.shed_late,
            queue_wait=self.admission.queue_wait, retries=p.retries, retries_denied=p.denied,
            retry_budget=p.tokens, idempotent_replays=self.cache.replays, connections=len(self.clients),
            inflight=self.active, max_connections=lim.max_connections, max_inflight=lim.max_inflight,
            membership_mode=self.cfg.membership, membership=self.membership.state())

    async def listen(self, host: str, port: int) -> None:
        """Serve clients on host:port (raises OSError when it cannot bind), within
        `limits` (vigil.router.http1.Listener): idle client connections close after
        `client_idle_timeout` (as nginx's keepalive_timeout); a request whose head
        takes longer than `client_header_timeout` in total to arrive, or whose body
        falls below `client_body_rate`, is dropped (slowloris); at most
        `max_pipeline` requests wait on one connection, counted in `max_inflight`."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(
            lambda: FrontProtocol(self.handle, self.front), host, port, reuse_address=True, backlog=1024))
        self._sweepers.append(loop.create_task(sweep(self.front)))

    async def listen_admin(self, host: str, port: int) -> None:
        """Serve /metrics and /_vigil/status on host:port (an operator's network),
        over https with `admin.cert_file`, behind `admin.tokens_file`'s tokens; at
        most ADMIN_MAX_CONNS connections, swept with the client timeouts."""
        from vigil.web import server_tls

        handler = admin_handler(self.cfg.admin_tokens, self.metrics, self.state)
        tls = server_tls(*self.cfg.admin_tls) if self.cfg.admin_tls else None
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(
            lambda: FrontProtocol(handler, self.admin), host, port, reuse_address=True, ssl=tls))
        self._sweepers.append(loop.create_task(sweep(self.admin)))

    def quiesce(self, hold: float = QUIESCE_HOLD) -> None:
        """SIGUSR1, from the agent before it gives up the VIP on purpose: clients'
        connections close after their answers (front_close.quiesce), for `hold` s."""
        n = quiesce(self.front)
        log.info("quiescing: %d client connection(s) close after their answers, for %g s", n, hold)
        if self._lift is not None:  # a second handover within the hold: it lasts from now
            self._lift.cancel()
        self._lift = asyncio.get_running_loop().call_later(hold, setattr, self.front, "closing", False)

    async def stop(self) -> None:
        for sweeper in self._sweepers:
            sweeper.cancel()
        for server in self._servers:
            server.close()
        # Keyed requests already sent finish and record their outcome first (within
        # the first-byte deadline), so a retry after a restart replays, not 409s.
        await self.keyed.drain(self.cfg.retry.per_try_timeout)
        self.keyed.close()
        for c in [*self.clients, *self.admin.conns]:
            c.close()
        await self.membership.stop()
        self.pool.close()
        self.tracing.shutdown()

    # -- membership callbacks ------------------------------------------------------
    def eject(self, name: str, cause: str) -> None:
        """Abandon the attempts waiting on `name`; they are retried elsewhere."""
        self.flight.eject(name, cause)

    def _on_change(self, name: str, state: str) -> None:
        log.info("backend %s: %s", name, state)
        self.metrics.node_changed(name, state)
        self.queue.wake(len(self.queue))  # a node back in rotation brings room

    # -- the data path -------------------------------------------------------------
    async def handle(self, req: Incoming, reply: Reply) -> None:
        t0 = self.clock.now()
        self.active += 1
        try:
            with self.tracing.span("vigil.router.request", **{"http.request.method": req.method,
                                                              "url.path": req.path}) as span:
                await self._handle(req, reply, t0, span)
        finally:
            self.active -= 1

    async def _handle(self, req: Incoming, reply: Reply, t0: float, span: Any) -> None:
        answer = self._refused(req, t0)
        if answer is None:
            await self._pace(reply.front.retry_at, t0)
            if key := req.header("Idempotency-Key"):
                answer = await self.keyed.handle(req, key, t0)
            else:
                answer = await self._route(req, t0, reply, buffer=False)
        if answer is not None:
            if answer.status == 429:
                reply.front.retry_at = self.clock.now() + (retry_hint(answer.headers) or 1.0)
            reply.whole(answer.status, answer.headers, answer.body)
            self.tracing.note(span, http__response__status_code=answer.status)
        else:
            self.tracing.note(span, streamed=True)  # relayed as it came (its status in the attempt)

    def _refused(self, req: Incoming, t0: float) -> Answered | None:
        """The answer to a request refused before any routing, or None."""
        if req.over_limit or self.active > self.cfg.limits.max_inflight:  # queued ones count
            self.metrics.finished(429, self.clock.now() - t0)
            return overloaded(f"the router holds its limit of {self.cfg.limits.max_inflight} "
                              "requests (limits.max_inflight)", 1.0)
        if req.too_large:
            return _error(413, f"request body larger than {self.cfg.max_body} bytes (limits.max_body)")
        if req.path.startswith("/_vigil/"):
            return _error(404, "the router's own endpoints are on its admin listener (admin.port)")
        if (why := client_continue(req.method, req.path, req.body)) is not None:
            return continue_refused(why)  # only this router's continuations carry it
        return None

    async def _pace(self, retry_at: float, now: float) -> None:
        """Hold a request whose connection came back before its 429's Retry-After
        until then (core.admission.RetryPacer); cancelled with its client."""
        if (hold := self.pacer.hold(retry_at, now)) > 0:
            self.metrics.paced.inc()
            try:
                with self.tracing.span("vigil.router.paced", seconds=round(hold, 3)):
                    await asyncio.sleep(hold)
            finally:
                self.pacer.released()

    async def _route(self, req: Incoming, t0: float, reply: Reply | None,
                     buffer: bool) -> Answered | None:
        """The answer, whole; or None once it was streamed to `reply`. The plan
        (vigil.core.request_plan) decides each step; this performs them."""
        stream = plan_stream(req, self.cfg.retry.resume_streams) if reply is not None and not buffer else None
        # a resumable stream is resent from its first token just as from its 37th
        safe = self.policy.safe(req.method, req.path, {}) or (stream is not None and stream.why_not is None)
        plan = RequestPlan(self.table, self.policy, self.admission, safe, req.method not in READ_METHODS)
        while True:
            step = plan.next(self.clock.now(), len(self.queue))
            if isinstance(step, Try):
                answer = await self._try(plan, step, req)
                if answer is None:
                    continue
                if stream is not None and reply is not None and is_event_stream(answer):
                    await ResumingStream(self, req, stream, reply, t0).run(step.backend, answer, step.attempt)
                    return None
                return await self._respond(reply, step.backend, answer, t0, step.attempt, buffer)
            if isinstance(step, Queue):
                with self.tracing.span("vigil.router.admission") as wait:
                    slot = await self.queue.wait(step.pool, step.front)
                    self.tracing.note(wait, outcome="admitted" if slot else "shed")
                plan.waited(slot)
            elif isinstance(step, Shed):
                return _outcome(self._shed(t0, step), step.maybe_ran)
            else:
                self.metrics.finished(step.code, self.clock.now() - t0)
                return _outcome(_error(step.code, step.message), step.maybe_ran)

    async def _try(self, plan: RequestPlan, step: Try, req: Incoming) -> Answer | None:
        """The answer of the plan's attempt; None when it failed (fed to the plan)."""
        b = step.backend
        try:
            with self.tracing.span("vigil.router.attempt", node=b.name, attempt=step.attempt):
                return await self.attempt(b, req)  # a failure is recorded on the span
        except AttemptFailed as e:
            log.info("attempt %d on %s failed (%s): %s", step.attempt, b.name, e.kind, e.cause)
            if plan.failed(self.clock.now(), e.kind, e.cause, e.status, e.retry_after):
                self.metrics.retries.inc()
                self.tracing.event(self.tracing.current(), "retry", after=b.name)
            return None

    def _shed(self, t0: float, step: Shed) -> Answered:
        if step.reason == "queue_full":  # refused a wait: the admission's span, as a wait's
            with self.tracing.span("vigil.router.admission") as wait:
                self.tracing.note(wait, outcome="shed")
        elapsed = self.clock.now() - t0
        self.metrics.shed.labels(step.reason).inc()
        self.metrics.shed_latency.observe(elapsed)
        self.metrics.finished(429, elapsed)
        return overloaded(step.message, step.retry_after)

    async def attempt(self, b: Backend, req: Incoming, first_byte: float | None = None) -> Answer:
        """One attempt up to the first byte (within `first_byte`, per_try_timeout unless
        given), in the request's own task: `eject` or the timer cancel that task with a
        recorded cause (asyncio.timeout's technique, without a task per attempt), which
        becomes AttemptFailed; a cancel without a cause (the client went away) propagates."""
        timeout = first_byte or self.cfg.retry.per_try_timeout
        self.table.started(b)
        started = self.clock.now()
        answer: Answer | None = None
        try:
            with self.flight.on(b.name) as task:
                timer = asyncio.get_running_loop().call_later(timeout, self.flight.abandon, task, "first_byte",
                                                              f"no first byte within {timeout:g} s (timed out)")
                try:
                    answer = await self._send(b, req)
                    return answer
                except asyncio.CancelledError:
                    if (cause := self.flight.cause_of(task)) is None:
                        raise
                    raise AttemptFailed(*cause) from None
                finally:
                    timer.cancel()
        finally:
            if answer is not None:
                now = self.clock.now()
                self.table.answered(b, now, now - started, *engine_report(answer.up))
            if answer is None or answer.whole:
                self.release(b)

    def release(self, b: Backend) -> None:
        """An attempt's slot on `b` is free again (its answer relayed or dropped)."""
        self.table.finished(b)
        self.queue.wake(1)

    async def _send(self, b: Backend, req: Incoming) -> Answer:
        return await send_attempt(self.pool, b.url, req)

    async def _respond(self, reply: Reply | None, b: Backend, answer: Answer,
                       t0: float, attempts: int, buffer: bool) -> Answered | None:
        up = answer.up
        headers = [(k, v) for k, v in up.headers if k.lower() not in HOP_BY_HOP and k.lower() != "x-vigil-node"]
        headers += [("X-Vigil-Node", b.name), ("X-Vigil-Attempts", str(attempts)),
                    ("X-Vigil-Router", self.cfg.name)]
        finished = False
        try:
            if answer.whole or buffer or reply is None:
                data = answer.head if answer.whole else answer.head + await self._rest(up)
                finished = True
                self._done(b, up.status, t0)
                return Answered(up.status, headers, data)
            reply.head(up.status, headers, up.content_length)
            chunk = answer.head
            while chunk:
                reply.write(chunk)
                await reply.drain()
                async with asyncio.timeout(self.cfg.retry.idle_timeout):
                    chunk = await up.read()
            reply.end()
            finished = True
            self._done(b, up.status, t0)
            return None
        except (UpstreamBroken, TimeoutError) as e:
            # The answer already started: it cannot be retried. Cut the client off
            # rather than pretend the truncated body is whole.
            why = (f"silent for {self.cfg.retry.idle_timeout:g} s" if isinstance(e, TimeoutError)
                   else str(e))
            if not isinstance(e, TimeoutError):
                self.table.failed(b.name, self.clock.now())
            self.metrics.finished(502, self.clock.now() - t0)
            log.warning("answer from %s cut after it started: %s", b.name, why)
            if reply is None or buffer or not reply.started:
                out = _error(502, f"{b.name}: answer broke after it started ({why})")
                out.headers.append((OUTCOME_HEADER, "unknown"))  # it ran; its answer is lost
                return out
            reply.abort()
            return None
        finally:
            if finished:
                up.release()
            elif up.transport:
                up.transport.abort()
            if not answer.whole:
                self.release(b)

    async def _rest(self, up: Upstream) -> bytes:
        """The rest of an answer held whole, up to MAX_BUFFERED bytes (a backend
        that sends more misbehaves: UpstreamBroken)."""
        parts, size = [], 0
        while True:
            async with asyncio.timeout(self.cfg.retry.idle_timeout):
                chunk = await up.read()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > MAX_BUFFERED:
                raise UpstreamBroken(f"an answer larger than {MAX_BUFFERED >> 20} MiB, held whole")
            parts.append(chunk)

    def _done(self, b: Backend, status: int, t0: float) -> None:
        if status < 500:
            self.table.succeeded(b.name, self.clock.now())
        else:
            self.table.failed(b.name, self.clock.now())
        self.metrics.finished(status, self.clock.now() - t0)


def _outcome(out: Answered, maybe_ran: bool) -> Answered:
    """`out`, marked as an unknown outcome when an earlier attempt may have run the
    request: a keyed request's key is then kept (vigil.router.keyed), never freed
    for a retry that could run it a second time."""
    if maybe_ran:
        out.headers.append((OUTCOME_HEADER, "unknown"))
    return out

