"""One request's way through the router, as a plan fed outcomes (sans-IO, in
the style of h11 and vigil.core.reconcile): `next` says the step to take,
the router performs it (vigil.router.proxy) and feeds back what came of it
(`failed`, `waited`), until a step ends the request.

Steps:
- `Try(backend)`: an attempt on an eligible backend with room (any eligible
  one for a metadata read, GET/HEAD/OPTIONS, which never queues), never one
  tried before for this request. Its answer ends the plan: the router relays
  it. A failure is fed to `failed`.
- `Queue(pool, front)`: every eligible node is at its limit and a slot can
  come within the queue wait (vigil.core.admission.Admission, Little's law):
  wait for one, at the head of the queue when the request waited before.
  First come, first served: while others wait, a newcomer queues behind them.
- `Shed(reason)`: 429 with Retry-After. `queue_full`: the queue would not
  drain in time; `queue_timeout`: no slot came within twice the queue wait;
  `engine_full`: every engine tried shed it itself (an engine's 429 means it
  never ran the request, so another node with room gets it, whatever the
  method, within `max_attempts`).
- `Fail(code, maybe_ran)`: 503 when no node can take it (with why: the
  table's reasons, or the last failure), else the last failure's status, 504
  after no first byte in time, 502 for the rest, once the retry policy
  (vigil.core.routing.RetryPolicy) refuses another attempt: an unsafe request
  that may have run, the attempt cap, the budget, or a 4xx.

A request that was never received (the connection refused) is safe to send
elsewhere whatever its method. So is one its engine refused saying it ran
nothing (`unready`: a 503 whose code is `not_ready`, a server still loading
its model), as an engine's 429 is, and neither spends the retry budget: the
budget guards engines against repeated work, and there was none.
`maybe_ran` marks an end after an attempt that may have run the request
(reset, no first byte, ejected, a 5xx): a keyed request's key is then kept
(vigil.router.keyed), not freed for a retry that could run it twice. The plan also feeds the table what the attempts
did (`failed`, `engine_shed`); a first byte missed behind a deep queue does
not inhibit its node.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.core import admission
from vigil.core.routing import Backend, RetryPolicy, RoutingTable

# Sent, and it may have run: reset, no first byte, node ejected, or the backend answered a 5xx.
UNKNOWN_OUTCOME = frozenset({"reset", "first_byte", "ejected", "status"})


@dataclass(frozen=True)
class Try:
    backend: Backend
    attempt: int  # 1 for the first


@dataclass(frozen=True)
class Queue:
    pool: list[Backend]  # the eligible nodes, all full: a slot on any of them will do
    front: bool  # it waited before and keeps its place at the head


@dataclass(frozen=True)
class Shed:
    reason: str  # queue_full | queue_timeout | engine_full
    message: str
    retry_after: float
    maybe_ran: bool


@dataclass(frozen=True)
class Fail:
    code: int
    message: str
    maybe_ran: bool


Step = Try | Queue | Shed | Fail


class RequestPlan:
    def __init__(self, table: RoutingTable, policy: RetryPolicy, admit: admission.Admission,
                 safe: bool, queues: bool):
        """`safe`: may run twice (RetryPolicy.safe, or a resumable stream); `queues`:
        inference work, which waits for room (a metadata read takes any eligible node)."""
        self.table, self.policy, self.admit, self.safe, self.queues = table, policy, admit, safe, queues
        policy.request_started()  # each request adds to the retry budget
        self.tried: set[str] = set()
        self.attempts = 0
        self.last = "no attempt"  # the last failure, for a 503's message
        self.full: admission.Shed | None = None  # of the engines that shed it, the soonest retry named
        self.admitted = False  # it waited in the queue once
        self.maybe_ran = False
        self.end: Shed | Fail | None = None
        self.current: Backend | None = None  # the backend of the last Try

    def next(self, now: float, waiting: int) -> Step:
        """The next step, with `waiting` requests in the router's queue."""
        if self.end is not None:
            return self.end
        pool = self.table.eligible(now, frozenset(self.tried))
        if not pool:
            if self.full is not None:  # every node we could try shed it: the engines are full
                return self._shed("engine_full", self.full)
            why = self.table.none_reason(now) if not self.tried else f"last failure: {self.last}"
            return self._fail(503, f"no ready inference node can take this request ({why})")
        if not self.queues:  # a metadata read (GET /v1/models): no inference capacity to guard
            backend = self.table.choose(now, pool=pool, need_room=False)
        else:  # first come, first served: while others wait, a newcomer queues behind them
            backend = None if waiting and not self.admitted else self.table.choose(now, pool=pool)
        if backend is None:
            if not self.admitted:
                slots = sum(b.limit.slots for b in pool)
                latency = max(b.limit.latency for b in pool)
                if (shed := self.admit.may_wait(waiting, slots, latency)) is not None:
                    return self._shed("queue_full", shed)
            return Queue(pool, self.admitted)
        self.tried.add(backend.name)
        self.attempts += 1
        self.current = backend
        return Try(backend, self.attempts)

    def waited(self, slot: bool) -> None:
        """The Queue step ended: a slot came (try again, from the head of the
        queue if it must wait once more), or none came within twice the queue wait."""
        self.admitted = True
        if not slot:
            self.end = self._shed("queue_timeout", admission.Shed(self.admit.queue_wait, ""))

    def failed(self, now: float, kind: str, cause: str, status: int | None = None,
               retry_after: float | None = None) -> bool:
        """The last Try's attempt failed (vigil.router.attempt.AttemptFailed's kind,
        cause, status and, for an engine's 429, its Retry-After). True when the retry
        policy spent a retry on it."""
        b = self.current
        assert b is not None, "a failure without a Try"
        self.last = f"{b.name}: {cause}"
        if kind == "overloaded":  # the engine shed it: it never ran; another node with room may
            shed = self.table.engine_shed(b, now, cause, retry_after)
            if self.full is None or shed.retry_after <= self.full.retry_after:
                self.full = shed  # the client is told the soonest any engine tried named
            if self.attempts >= self.policy.max_attempts:
                self.end = self._shed("engine_full", self.full)
            return False
        if kind == "unready":  # it ran nothing and said why: another node may, no retry spent
            self.table.not_ready(b.name, now)
            if self.attempts >= self.policy.max_attempts:
                self.end = (self._shed("engine_full", self.full) if self.full is not None
                            else self._fail(status or 503, f"{self.last} (after {self.attempts} attempts)"))
            return False
        if kind != "first_byte":
            # Slow is not hung: whether the engine still makes progress is its agent's
            # verdict (vigil.core.engine), which reaches the router as readiness within a
            # second, and whether the node lives is the heartbeat detector's. A deadline
            # missed behind a deep queue only moves this request; the node keeps its traffic.
            self.table.failed(b.name, now)
        self.maybe_ran = self.maybe_ran or kind in UNKNOWN_OUTCOME
        # Never received (no connection): safe to send elsewhere, whatever the method.
        if self.policy.may_retry(self.attempts, self.safe or kind == "connect", status):
            return True
        why = "unsafe request" if not self.safe else "retry limit or budget"
        self.end = self._fail(status or (504 if kind == "first_byte" else 502),
                              f"{self.last} (not retried: {why})")
        return False

    def _shed(self, reason: str, shed: admission.Shed) -> Shed:
        message = (f"waited {2 * self.admit.queue_wait:g} s for a free slot" if reason == "queue_timeout"
                   else shed.reason)
        return Shed(reason, message, shed.retry_after, self.maybe_ran)

    def _fail(self, code: int, message: str) -> Fail:
        return Fail(code, message, self.maybe_ran)
