"""Routing choices for the router: which backend gets the next attempt, when
a failed attempt may be retried, and the retry budget.

Rules:
- A backend is eligible when its inference server is ready (member record),
  the router has heard its node (at least one authentic heartbeat; a name
  the router never heard is only a name someone wrote into etcd), its node
  is not suspected by the router's own heartbeat detector, its URL is one
  the router may send to (vigil.core.allowlist), its decided state allows
  traffic, and it is not locally inhibited.
- Among eligible backends the one with the fewest outstanding requests wins,
  each counted against its weight ((outstanding + 1) / weight: a degraded
  node, weight 0.5, gets work only once the others are busier); ties rotate,
  so equal nodes share the load.
- A failed attempt (connect error, reset, 502/503/504, per-attempt timeout)
  inhibits that backend for `inhibit_base`, doubling on repeated failures up
  to `inhibit_max` (Envoy's ejection back-off); a success clears it.
- Capacity: a backend takes a new attempt only while its in-flight count is
  below its adaptive limit (vigil.core.admission). A full backend is still
  eligible: load never ejects, inhibits or suspects a node.
- The table is fed events, and only it writes a Backend's fields: what the
  membership learns by name (`member`: where the node is and its weight;
  `ready`, `went`, `state`, `refuse`, `heard`: each says whether
  eligibility's inputs changed), and what the
  attempts on a backend do (`started`, `finished`, `answered`,
  `engine_shed`, then `failed`/`succeeded`).
- Panic threshold (Envoy's): when the eligible share of the nodes that are
  not confirmed gone (suspected by the router's own heartbeat detector,
  member record gone, decided failed/fenced/maintenance/draining) falls
  below `panic_threshold`, route to all of those rather than to none: an
  engine verdict or an inhibition wrong everywhere at once (overload that
  made every agent call its engine hung) must not become a total outage.
  Below that, inhibition alone never empties the pool either.
- Retries: only for safe requests (idempotent methods, POSTs to declared
  idempotent paths; any request that was never received), never after a 4xx
  (an engine's 429 or 503 `not_ready` says it ran nothing: the request goes
  to another node whatever its method, and spends no budget), never to a
  backend already tried for this request, at most `max_attempts` in all,
  and only while the retry budget has a token: each request adds
  `budget_ratio` tokens (capped), each retry spends one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from vigil.core.admission import NodeLimit, Shed

DEGRADED_WEIGHT = 0.5


def _load(b: "Backend") -> float:
    return (b.outstanding + 1) / b.weight


NEVER_HEARD = ("never heard: no authentic heartbeat from it yet (is this router in the agent's "
               "heartbeat.observers? membership: etcd_only routes without heartbeats)")
NO_TRAFFIC_STATES = frozenset({"failed", "fenced", "maintenance", "draining", "held"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass
class Backend:
    name: str
    url: str = ""
    ready: bool = False
    heard: bool = False  # an authentic heartbeat arrived once (or membership: etcd_only vouches)
    alive: bool = True  # not suspected by the router's detector since
    refused: str = ""  # why the router will not send to `url` (backends.allow), else ""
    state: str = "standby"
    outstanding: int = 0
    weight: float = 1.0  # DEGRADED_WEIGHT while its node's health verdict is degraded
    inhibited_until: float = 0.0
    inhibit_for: float = 0.0
    failures: int = 0
    served: int = 0
    gone: bool = False  # member record deleted (lease expired or revoked)
    limit: NodeLimit = field(default_factory=NodeLimit)
    engine_queue: int = 0  # work pending at the engine, as it last reported (all routers)
    shed_by_engine: int = 0
    refused_not_ready: int = 0  # attempts its engine refused as not ready (it ran nothing)
    last_success: float = float("-inf")

    def has_room(self) -> bool:
        """Below this router's limit, and the engine's own last report (every
        router's work, and work abandoned by timeouts) below it too; a router
        with nothing in flight may always send one, which refreshes the report."""
        slots = self.limit.slots
        return self.outstanding < slots and (self.outstanding == 0 or self.engine_queue < slots)

    def gone_reason(self) -> str | None:
        """Why this node is confirmed unable to serve (no panic routes to it)."""
        if not self.url:
            return "no inference server"
        if self.gone:
            return "member record gone (lease expired or revoked)"
        if self.refused:
            return f"refused: {self.refused}"
        if not self.heard:
            return NEVER_HEARD
        if not self.alive:
            return "node suspected (heartbeats lost)"
        if self.state in NO_TRAFFIC_STATES:
            return f"node is {self.state}"
        return None

    def why_not(self, now: float, ignore_inhibition: bool = False) -> str | None:
        """None when eligible, else the reason it gets no traffic."""
        gone = self.gone_reason()
        if gone:
            return gone
        if not self.ready:
            return "inference server not ready"
        if not ignore_inhibition and now < self.inhibited_until:
            return f"inhibited for {self.inhibited_until - now:.2f} s after failures"
        return None


@dataclass
class RoutingTable:
    inhibit_base: float = 1.0
    inhibit_max: float = 30.0
    panic_threshold: float = 0.0
    new_limit: NodeLimit = field(default_factory=NodeLimit)  # template for new backends
    backends: dict[str, Backend] = field(default_factory=dict)
    panicking: bool = False
    _turn: int = 0

    def backend(self, name: str, state: str = "standby", heard: bool = False) -> Backend:
        """`name`'s backend; a new one starts in `state`, `heard` or not (the
        membership's etcd_only vouches for a node by its record alone)."""
        if name not in self.backends:
            # Each backend its own limit, shaped like the template (init=False state is fresh).
            self.backends[name] = Backend(name, state=state, heard=heard,
                                          limit=dataclasses.replace(self.new_limit))
        return self.backends[name]

    # -- what the membership learns, by name (all but `member` return whether they changed anything)
    def member(self, name: str, url: str, weight: float = 1.0) -> None:
        """`name`'s member record: its inference URL and weight (the record is back)."""
        b = self.backend(name)
        b.gone, b.url, b.weight = False, url, weight

    def ready(self, name: str, ready: bool) -> bool:
        """Its inference server's readiness, as its record reports it. A server that
        turns ready starts afresh: what it answered while not ready (a loading server's
        503s) does not keep it out."""
        b = self.backend(name)
        if ready and not b.ready:
            b.inhibit_for = b.inhibited_until = 0.0
        return self._set(b, ready=ready)

    def went(self, name: str) -> bool:
        """Its member record is gone (lease expired or revoked)."""
        return self._set(self.backend(name), gone=True, ready=False)

    def state(self, name: str, state: str) -> bool:
        """Its node's decided state (vigil.core.reconcile)."""
        return self._set(self.backend(name), state=state)

    def refuse(self, name: str, why: str) -> bool:
        """Why the router may not send to its URL (vigil.core.allowlist); "" admits it."""
        return self._set(self.backend(name), refused=why)

    def heard(self, name: str, alive: bool) -> bool:
        """The router's detector: its node alive (heard, at least once now) or suspected."""
        b = self.backend(name)
        return self._set(b, heard=True, alive=True) if alive else self._set(b, alive=False)

    @staticmethod
    def _set(b: Backend, **fields: object) -> bool:
        if all(getattr(b, k) == v for k, v in fields.items()):
            return False
        for k, v in fields.items():
            setattr(b, k, v)
        return True

    # -- what the attempts on a backend do. They hold the Backend they chose: one
    # forgotten (and perhaps learnt again) while they ran is not the one they took.
    @staticmethod
    def started(b: Backend) -> None:
        """An attempt took a slot on `b`."""
        b.outstanding += 1

    @staticmethod
    def finished(b: Backend) -> None:
        """An attempt's slot on `b` is free again (its answer relayed or dropped)."""
        b.outstanding -= 1

    @staticmethod
    def answered(b: Backend, now: float, latency: float, queue_s: float | None = None,
                 service_s: float | None = None, depth: int | None = None) -> None:
        """An answer's head arrived after `latency`: the engine's own queue and
        service times, and its queue depth, where it said them."""
        if depth is not None:
            b.engine_queue = depth
        b.limit.sample(now, latency, queue_s, service_s, b.outstanding)

    @staticmethod
    def engine_shed(b: Backend, now: float, cause: str, retry_after: float | None = None) -> Shed:
        """`b`'s engine shed an attempt (429): full now. When to try again: when the
        engine said (it knows its queue; `retry_after`, at most 30 s), else after
        one of its answers' latency."""
        b.limit.overloaded(now)
        b.shed_by_engine += 1
        wait = max(0.05, b.limit.latency) if retry_after is None else max(0.05, min(30.0, retry_after))
        return Shed(wait, f"{b.name} is full: {cause}")

    def eligible(self, now: float, exclude: frozenset[str] = frozenset()) -> list[Backend]:
        present = [b for b in self.backends.values() if b.gone_reason() is None]
        ok_all = [b for b in present if b.why_not(now) is None]
        self.panicking = bool(present) and len(ok_all) < self.panic_threshold * len(present)
        pool = [b for b in self.backends.values() if b.name not in exclude]
        if self.panicking:
            return [b for b in pool if b.gone_reason() is None]
        ok = [b for b in pool if b.why_not(now) is None]
        if not ok:  # never let inhibition alone empty the pool
            ok = [b for b in pool if b.why_not(now, ignore_inhibition=True) is None]
        return ok

    def choose(self, now: float, exclude: frozenset[str] = frozenset(),
               pool: list[Backend] | None = None, need_room: bool = True) -> Backend | None:
        """The eligible backend with room (unless not `need_room`) and the fewest
        outstanding; None if none is eligible or every eligible one is full."""
        ok = self.eligible(now, exclude) if pool is None else pool
        if need_room:
            ok = [b for b in ok if b.has_room()]
        if not ok:
            return None
        least = min(_load(b) for b in ok)
        tied = sorted((b for b in ok if _load(b) == least), key=lambda b: b.name)
        self._turn += 1
        return tied[self._turn % len(tied)]

    def forget(self, name: str) -> None:
        """Drop `name` (its member record went and it is no member the router
        keeps): a name invented in etcd must not stay in memory."""
        self.backends.pop(name, None)

    def not_ready(self, name: str, now: float) -> None:
        """`name`'s engine refused an attempt as not ready (it ran nothing): a failure
        for the inhibition, counted on its own."""
        b = self.backends.get(name)
        if b is not None:
            b.refused_not_ready += 1
        self.failed(name, now)

    def failed(self, name: str, now: float) -> None:
        b = self.backends.get(name)
        if b is None:  # forgotten while the attempt ran
            return
        b.failures += 1
        b.inhibit_for = min(self.inhibit_max, b.inhibit_for * 2 if b.inhibit_for else self.inhibit_base)
        b.inhibited_until = now + b.inhibit_for

    def succeeded(self, name: str, now: float = 0.0) -> None:
        b = self.backends.get(name)
        if b is None:
            return
        b.served += 1
        b.last_success = now
        if b.inhibit_for:
            b.inhibit_for = b.inhibited_until = 0.0

    def none_reason(self, now: float) -> str:
        if not self.backends:
            return "no inference node is known yet"
        return "; ".join(f"{b.name}: {b.why_not(now)}" for b in sorted(self.backends.values(),
                                                                    key=lambda b: b.name))


@dataclass
class RetryPolicy:
    max_attempts: int = 3
    budget_ratio: float = 0.2
    budget_cap: float = 50.0
    idempotent_paths: tuple[str, ...] = ("/v1/embeddings",)
    tokens: float = 10.0
    retries: int = 0
    denied: int = 0

    def safe(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """May a failed attempt be sent again elsewhere, even if it may have run?
        An Idempotency-Key does not make a request safe: it makes it at most once
        (the router retries it only where it was never received)."""
        if method.upper() in IDEMPOTENT_METHODS:
            return True
        return method.upper() == "POST" and path in self.idempotent_paths

    def request_started(self) -> None:
        self.tokens = min(self.budget_cap, self.tokens + self.budget_ratio)

    def may_retry(self, attempt: int, safe: bool, status: int | None) -> bool:
        """After attempt number `attempt` failed (status None: no response)."""
        if not safe or attempt >= self.max_attempts:
            return False
        if status is not None and status not in RETRYABLE_STATUS:
            return False
        if self.tokens < 1:
            self.denied += 1
            return False
        self.tokens -= 1
        self.retries += 1
        return True
