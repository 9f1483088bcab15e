"""Idempotency-Key handling: a repeated key within the window returns the
first result and never executes twice.

Contract:
- A key is bound to what it was first sent with: method, path and a SHA-256
  of the body (the fingerprint). The same key with another fingerprint is
  `Mismatch` (the router answers 422): it never returns someone else's answer.
- `begin(key, fingerprint, now)` returns a finished Result (replay it), an
  awaitable that resolves to the first request's Result (it is still running),
  `Mismatch`, or None (this request owns the key and MUST end with `finish` or
  `abandon` on every path: callers use try/finally).
- `finish` keeps 2xx/3xx answers, and failures after which the request may
  have run (`keep`: a timeout or reset once it was sent), so a client's retry
  cannot run it twice; a 4xx, a 429 or a failure before anything was sent
  frees the key so the client may try again. A result too large to keep
  (over `max_result_bytes`) is remembered as done but not replayable
  (`Result.body is None`: the router answers 409).
- Memory is bounded: at most `max_entries` finished results and
  `max_bytes` of bodies; the oldest go first.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None  # None: executed, but too large to keep for a replay


@dataclass(frozen=True)
class Mismatch:
    first: str  # the method and path the key was first used with


def fingerprint(method: str, path: str, body: bytes) -> str:
    return f"{method.upper()} {path} {hashlib.sha256(body).hexdigest()}"


class IdempotencyCache:
    def __init__(self, window: float = 600.0, max_entries: int = 10000, max_bytes: int = 64 << 20,
                 max_result_bytes: int = 1 << 20):
        self.window, self.max_entries = window, max_entries
        self.max_bytes, self.max_result_bytes = max_bytes, max_result_bytes
        self._done: OrderedDict[str, tuple[float, str, Result]] = OrderedDict()
        self._running: dict[str, tuple[str, asyncio.Future]] = {}
        self._bytes = 0
        self.replays = 0
        self.mismatches = 0

    def begin(self, key: str, fp: str, now: float) -> Result | Mismatch | asyncio.Future | None:
        self._expire(now)
        if key in self._done:
            _, first, result = self._done[key]
            return self._same(first, fp) or self._replay(result)
        if key in self._running:
            first, fut = self._running[key]
            return self._same(first, fp) or self._replay(asyncio.shield(fut))
        self._running[key] = (fp, asyncio.get_running_loop().create_future())
        return None

    def finish(self, key: str, result: Result, now: float, keep: bool = False) -> None:
        """The owner got an answer: keep it if it says the request was done (2xx,
        3xx), or if `keep` (a failure after which the request may have run)."""
        if not keep and not 200 <= result.status < 400:
            self.abandon(key, result)
            return
        fp, fut = self._running.pop(key, ("", None))
        if result.body is not None and len(result.body) > self.max_result_bytes:
            result = Result(result.status, result.headers, None)
        self._done[key] = (now, fp, result)
        self._bytes += len(result.body or b"")
        while self._done and (len(self._done) > self.max_entries or self._bytes > self.max_bytes):
            self._drop_oldest()
        if fut and not fut.done():
            fut.set_result(result)

    def abandon(self, key: str, outcome: BaseException | Result) -> None:
        """No kept result: free the key; waiters get `outcome` (raised if an error)."""
        _, fut = self._running.pop(key, ("", None))
        if fut is None or fut.done():
            return
        if isinstance(outcome, Result):
            fut.set_result(outcome)
        else:
            fut.set_exception(outcome)
            fut.exception()  # waiters get it; mark retrieved so nothing is logged

    def _same(self, first: str, fp: str) -> Mismatch | None:
        if first == fp:
            return None
        self.mismatches += 1
        return Mismatch(" ".join(first.split()[:2]))

    def _replay(self, value):
        self.replays += 1
        return value

    def _drop_oldest(self) -> None:
        _, (_, _, result) = self._done.popitem(last=False)
        self._bytes -= len(result.body or b"")

    def _expire(self, now: float) -> None:
        while self._done:
            at = next(iter(self._done.values()))[0]
            if now - at < self.window:
                break
            self._drop_oldest()
