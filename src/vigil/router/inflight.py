"""The requests in flight to each backend (an attempt waiting for its first
byte, a stream being relayed), so that an ejection or a timer can cancel one
with a recorded cause: asyncio.timeout's technique, without a task per
attempt. The holder of a cancelled task reads the cause once (`cause_of`); a
cancel without one (the client went away) is not ours and propagates."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Iterator


class InFlight:
    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task[object]]] = defaultdict(set)
        self._causes: dict[asyncio.Task[object], tuple[str, str]] = {}

    @contextlib.contextmanager
    def on(self, backend: str) -> Iterator[asyncio.Task[object]]:
        """The current task, in flight to `backend` for the block."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks[backend].add(task)
        try:
            yield task
        finally:
            self._tasks[backend].discard(task)

    def abandon(self, task: asyncio.Task[object], kind: str, cause: str) -> None:
        """Cancel `task`, recording why (a no-op once it is done)."""
        if not task.done():
            self._causes[task] = (kind, cause)
            task.cancel()

    def eject(self, backend: str, cause: str) -> None:
        """Abandon everything in flight to `backend`; it is retried or resumed elsewhere."""
        for task in list(self._tasks.get(backend, ())):
            self.abandon(task, "ejected", f"abandoned: node {backend} ejected ({cause})")

    def cause_of(self, task: asyncio.Task[object]) -> tuple[str, str] | None:
        """(kind, cause) of our cancel of `task`, taken once: the task is then
        uncancelled, as it goes on; None: a cancel not ours, to propagate."""
        cause = self._causes.pop(task, None)
        if cause is not None:
            task.uncancel()
        return cause
