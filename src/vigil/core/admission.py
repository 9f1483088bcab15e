"""Admission control for the router: how many requests each engine may have
in flight from this router, and whether a request that finds every eligible
engine full may wait or is shed at once with 429 and Retry-After.

`NodeLimit` (per engine, AIMD): the signal is queueing, measured by the
engine itself where it can (X-Vigil-Queue-Ms against X-Vigil-Service-Ms:
time waited against time worked), else the attempt's latency against the
lowest latency seen lately (TCP Vegas, Netflix's VegasLimit). Below the
tolerance the limit grows by 1/limit per answer (about +1 per round of
`limit` answers); above it, it shrinks by `backoff` at most once per
latency; an engine's 429 (it shed) shrinks it at once. Several routers
fronting one engine each see that engine's own queueing, so their limits
together shrink until the engine's queue is back within tolerance: the
engine's report is the signal they share, no router-to-router traffic.

`Admission` (per router, Little's law): a request may wait in the router's
queue only if the queue ahead of it is expected to drain within
`queue_wait` at the current rate (sum of limits / latency); otherwise it is
shed at once (429, Retry-After = the expected drain time), so a shed
request learns it within milliseconds instead of timing out.

`RetryPacer` (per router): a client that ignores Retry-After and sends again at
once (a retry storm) gets no cheaper answer than a polite one: a connection
told to retry at T that sends its next request before T is held until T, then
admitted as any request. Each storming client then asks once per Retry-After,
as a polite one does, instead of spinning the router (and the engine beside it
on the node) through 429 after 429. Held requests cost a timer each, no CPU.

A node's load never makes it ineligible: limits only ever say "not now".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeLimit:
    limit: float = 4.0
    min_limit: float = 1.0
    max_limit: float = 256.0
    tolerance: float = 2.0  # queueing allowed, in units of the engine's own service time
    backoff: float = 0.9
    queue_budget: float = float("inf")  # seconds of work the engine may hold from this router
    latency: float = 0.0  # EWMA of answered attempts, seconds
    service: float = 0.0  # EWMA of the engine's own work per request, when it says
    min_latency: float = 0.0
    _min_window: list[float] = field(init=False, default_factory=lambda: [float("inf"), float("inf")])
    _samples: int = field(init=False, default=0)
    _cut_at: float = field(init=False, default=float("-inf"))

    def __repr__(self) -> str:
        return f"<NodeLimit {self.limit:.1f} latency={self.latency * 1000:.0f}ms>"

    @property
    def slots(self) -> int:
        """Attempts allowed in flight: the limit, and no more work than the queue
        budget (most of the first-byte deadline) at the engine's service time;
        but that cap never goes below 2, so one request always waits behind the
        running one and the engine never idles between answers."""
        slots = int(self.limit)
        if self.service > 0 and self.queue_budget != float("inf"):
            slots = min(slots, max(2, int(self.queue_budget / self.service)))
        return max(int(self.min_limit), slots)

    def overloaded(self, now: float) -> None:
        """The engine shed a request (429): it is full now, whatever latency says."""
        self.limit = max(self.min_limit, self.limit * 0.7)
        self._cut_at = now

    def sample(self, now: float, latency: float, queue_s: float | None = None,
               service_s: float | None = None, inflight: float | None = None) -> None:
        """An attempt answered after `latency` with `inflight` attempts out; the
        engine may say how long it queued (`queue_s`) and worked (`service_s`).
        The limit grows only while it binds (`inflight` at the limit): a limit
        that grew unused in a quiet hour would let a burst flood the engine
        before a single answer could shrink it."""
        self.latency = latency if not self.latency else 0.9 * self.latency + 0.1 * latency
        self._track_min(latency)
        if queue_s is not None and service_s is not None:
            self.service = service_s if not self.service else 0.8 * self.service + 0.2 * service_s
            congested = queue_s > self.tolerance * max(service_s, 0.001)
        else:
            congested = latency > (1 + self.tolerance) * max(self.min_latency, 0.001)
        if congested:
            if now - self._cut_at >= latency:  # once per round trip, as TCP does
                self.limit = max(self.min_limit, self.limit * self.backoff)
                self._cut_at = now
        elif inflight is None or inflight >= self.slots:
            self.limit = min(self.max_limit, self.limit + 1.0 / self.limit)

    def _track_min(self, latency: float) -> None:
        # The lowest latency of the last two windows of 100 answers: old lows expire.
        self._samples += 1
        if self._samples % 100 == 0:
            self._min_window = [self._min_window[1], float("inf")]
        self._min_window[1] = min(self._min_window[1], latency)
        self.min_latency = min(self._min_window)


@dataclass(frozen=True)
class Shed:
    retry_after: float  # seconds until the queue ahead is expected to drain
    reason: str


@dataclass
class Admission:
    queue_wait: float = 2.0
    max_queue: int = 1024
    shed: int = 0

    def may_wait(self, queued: int, slots: int, latency: float) -> Shed | None:
        """None: the request may wait for a slot. Else shed it, and say when to retry."""
        drain = (queued + 1) * max(latency, 0.001) / max(slots, 1)
        if queued >= self.max_queue:
            return self._shed(drain, f"router queue full ({queued} waiting)")
        if drain > self.queue_wait:
            return self._shed(drain, f"every eligible node is at its concurrency limit ({slots} slots) "
                                     f"and the {queued} requests waiting need about {drain:.2f} s")
        return None

    def _shed(self, drain: float, reason: str) -> Shed:
        self.shed += 1
        return Shed(drain, reason)


@dataclass
class RetryPacer:
    """How long to hold a request whose connection was told to retry at `retry_at`
    (monotonic s) and came back sooner: until then, at most `max_hold` s, and
    only while fewer than `max_held` requests are held (past that, a storm of
    connections is answered at once rather than held without bound)."""
    max_hold: float = 5.0
    max_held: int = 1024
    held: int = 0  # held now
    paced: int = 0  # held so far

    def hold(self, retry_at: float, now: float) -> float:
        """Seconds to hold the request (0: serve it now). A positive answer counts it
        as held: call `released` when the hold ends, however it ends."""
        wait = min(retry_at - now, self.max_hold)
        if wait <= 0 or self.held >= self.max_held:
            return 0.0
        self.held += 1
        self.paced += 1
        return wait

    def released(self) -> None:
        self.held -= 1
