"""Idempotency-Key handling: a repeated key within the window returns the
first result and never executes twice.

Contract: `begin(key)` returns either a finished Result (replay it), an
awaitable that resolves to the first request's Result (it is still running),
or None (this request owns the key and must call `finish` or `abandon`).
A request that failed without a response abandons the key, so a client's
retry may execute it again (nothing was executed to completion).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class IdempotencyCache:
    def __init__(self, window: float = 600.0, max_entries: int = 10000):
        self.window, self.max_entries = window, max_entries
        self._done: OrderedDict[str, tuple[float, Result]] = OrderedDict()
        self._running: dict[str, asyncio.Future] = {}
        self.replays = 0

    def begin(self, key: str, now: float) -> Result | asyncio.Future | None:
        self._expire(now)
        if key in self._done:
            self.replays += 1
            return self._done[key][1]
        if key in self._running:
            self.replays += 1
            return asyncio.shield(self._running[key])
        self._running[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, result: Result, now: float) -> None:
        fut = self._running.pop(key, None)
        self._done[key] = (now, result)
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
        if fut and not fut.done():
            fut.set_result(result)

    def abandon(self, key: str, error: BaseException) -> None:
        fut = self._running.pop(key, None)
        if fut and not fut.done():
            fut.set_exception(error)
            fut.exception()  # waiters get it; mark retrieved so nothing is logged

    def _expire(self, now: float) -> None:
        while self._done:
            key, (at, _) = next(iter(self._done.items()))
            if now - at < self.window:
                break
            self._done.popitem(last=False)
