"""Routing choices for the router: which backend gets the next attempt, when
a failed attempt may be retried, and the retry budget.

Rules:
- A backend is eligible when its inference server is ready (member record),
  its node is not suspected by the router's own heartbeat detector, its
  decided state allows traffic, and it is not locally inhibited.
- Among eligible backends the one with the fewest outstanding requests wins
  (ties rotate, so equal nodes share the load).
- A failed attempt (connect error, reset, 502/503/504, per-attempt timeout)
  inhibits that backend for `inhibit_base`, doubling on repeated failures up
  to `inhibit_max` (Envoy's ejection back-off); a success clears it.
- Panic guard: if inhibition alone would leave no backend, it is ignored
  (when everything looks broken at once, the observer is the likely fault).
  Readiness, suspicion and state are never ignored.
- Retries: only for safe requests (idempotent methods, POSTs to declared
  idempotent paths, or carrying an Idempotency-Key), never after a 4xx,
  never to a backend already tried for this request, at most `max_attempts`
  in all, and only while the retry budget has a token: each request adds
  `budget_ratio` tokens (capped), each retry spends one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

NO_TRAFFIC_STATES = frozenset({"failed", "fenced", "maintenance", "draining"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass
class Backend:
    name: str
    url: str = ""
    ready: bool = False
    alive: bool = True
    state: str = "standby"
    outstanding: int = 0
    inhibited_until: float = 0.0
    inhibit_for: float = 0.0
    failures: int = 0
    served: int = 0

    def why_not(self, now: float, ignore_inhibition: bool = False) -> str | None:
        """None when eligible, else the reason it gets no traffic."""
        if not self.url:
            return "no inference server"
        if not self.ready:
            return "inference server not ready"
        if not self.alive:
            return "node suspected (heartbeats lost)"
        if self.state in NO_TRAFFIC_STATES:
            return f"node is {self.state}"
        if not ignore_inhibition and now < self.inhibited_until:
            return f"inhibited for {self.inhibited_until - now:.2f} s after failures"
        return None


@dataclass
class RoutingTable:
    inhibit_base: float = 1.0
    inhibit_max: float = 30.0
    backends: dict[str, Backend] = field(default_factory=dict)
    _turn: int = 0

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            self.backends[name] = Backend(name)
        return self.backends[name]

    def eligible(self, now: float, exclude: frozenset[str] = frozenset()) -> list[Backend]:
        pool = [b for b in self.backends.values() if b.name not in exclude]
        ok = [b for b in pool if b.why_not(now) is None]
        if not ok:  # panic guard: never let inhibition alone empty the pool
            ok = [b for b in pool if b.why_not(now, ignore_inhibition=True) is None]
        return ok

    def choose(self, now: float, exclude: frozenset[str] = frozenset()) -> Backend | None:
        ok = self.eligible(now, exclude)
        if not ok:
            return None
        least = min(b.outstanding for b in ok)
        tied = sorted((b for b in ok if b.outstanding == least), key=lambda b: b.name)
        self._turn += 1
        return tied[self._turn % len(tied)]

    def failed(self, name: str, now: float) -> None:
        b = self.backend(name)
        b.failures += 1
        b.inhibit_for = min(self.inhibit_max, b.inhibit_for * 2 if b.inhibit_for else self.inhibit_base)
        b.inhibited_until = now + b.inhibit_for

    def succeeded(self, name: str) -> None:
        b = self.backend(name)
        b.served += 1
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
        if method.upper() in IDEMPOTENT_METHODS:
            return True
        if any(k.lower() == "idempotency-key" for k in headers.keys()):
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
