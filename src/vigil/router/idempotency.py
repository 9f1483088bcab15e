"""Idempotency-Key handling, the router's own memory of it: a repeated key
within the window returns the first result and never executes twice.

Contract:
- A key belongs to its caller: `scope` digests it with the request's
  Authorization, so another caller's same key is another key (it never gets
  the first caller's answer, and cannot block it).
- A key is bound to what it was first sent with: method, path and a SHA-256
  of both and the body (the fingerprint). The same key with another
  fingerprint is `Mismatch` (the router answers 422).
- `begin(key, fingerprint, now)` returns a finished Result (replay it), an
  awaitable that resolves to the first request's Result (it is still running
  in this router), `Mismatch`, or None (this request owns the key and MUST
  end with `finish` or `abandon` on every path).
- `keeps(status, headers)` is the rule for what settles a key: once a request
  may have run, its outcome is kept (a backend's answer other than 4xx, a
  backend's own 5xx included, or an unknown outcome after the request was
  sent); a 4xx (429 included) or a failure before anything was sent frees it.
- This is one router's fast path, bounded (`max_entries` results, `max_bytes`
  of bodies, the oldest dropped first; a result over `max_result_bytes` is
  kept without its body: `Result.body is None`, the router answers 409).
  What it drops inside the window is still held by the cluster's marker in
  etcd (vigil.store.idem), which the router asks on every miss here.
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
    """`METHOD path sha256`: the digest covers the whole method, path and body;
    the readable part is cut short (it is kept, in etcd too)."""
    h = hashlib.sha256(f"{method.upper()} {path}\n".encode("utf-8", "backslashreplace") + body)
    return f"{method.upper()[:16]} {path[:256]} {h.hexdigest()}"


def scope(key: str, authorization: str) -> str:
    """The key as this caller's: a SHA-256 of its Authorization and the key."""
    auth = authorization.encode("utf-8", "backslashreplace")
    return hashlib.sha256(b"%d:" % len(auth) + auth + key.encode("utf-8", "backslashreplace")).hexdigest()


def keeps(status: int, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bool:
    """Does this answer settle the key for the window (see the module docstring)?
    `X-Vigil-Node` marks a backend's answer, `X-Vigil-Outcome: unknown` a
    router's error after the request was sent."""
    names = {k.lower(): v for k, v in headers}
    if names.get("x-vigil-outcome") == "unknown":
        return True
    return "x-vigil-node" in names and not 400 <= status < 500


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

    def __len__(self) -> int:
        """The answers kept for replay."""
        return len(self._done)

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

    def finish(self, key: str, result: Result, now: float) -> None:
        """The owner's outcome settles the key: keep it for the window."""
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
