"""The agent's watch of the registry: it keeps the decision loop's mirror
(vigil.store.mirror) up to date and wakes the loop when a change needs a
decision.

Contract:
- Watches the snapshot's keys only ([events0, prefix end)): the events
  before them are records of what happened, and at hundreds of nodes every
  agent would be sent every agent's.
- The watch never resumes behind the mirror's back (`resume=False`): when it
  breaks (its member lost the raft leader, or the store moved off that
  member), the mirror stops being current, and the watch starts again after
  the revision before the mirror's, after a seeded, jittered back-off (every
  agent's watch breaks at once when etcd loses its leader, and they must
  not all come back together). A compacted history makes the mirror load
  again.
- Waking: a change of the leader key, the switchover request or a fencing
  marker wakes the loop at once. Any other change (member records, decided
  states, holds) wakes it at most once per SETTLE after the last cycle began:
  a burst (a cluster starting, a rack's records changing together) is decided
  on once, not once per key per agent, which at N agents costs N^2 cycles. A
  cycle that begins takes the deferred wake (it reads every change applied so
  far); if that cycle fails, the change is decided on by the next one (within
  `loop_interval`). Payload records wake nothing (records of work, in no
  decision); a deleted one is handed to `on_payload_gone` (the batch job
  runner claims an orphaned shard on its owner record's deletion).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

from vigil.errors import StoreError, WatchCompacted
from vigil.store.base import Store, WatchEvent
from vigil.store.keys import Keys
from vigil.store.mirror import RegistryMirror

log = logging.getLogger(__name__)

SETTLE = 0.05  # s: the most a member record's or state's change waits for its decision


class RegistryWatch:
    def __init__(self, store: Store, keys: Keys, mirror: RegistryMirror, wake: Callable[[], None],
                 now: Callable[[], float], seed: str):
        self.store, self.keys, self.mirror, self._wake, self._now = store, keys, mirror, wake, now
        self._jitter = random.Random(seed)  # seeded: a simulation's runs repeat
        self._urgent = (keys.leader, keys.switchover)
        self._cycle_at = float("-inf")
        self._deferred: asyncio.TimerHandle | None = None
        self.on_payload_gone: Callable[[str], None] = lambda key: None

    def cycle_started(self, now: float) -> None:
        """The decision loop began a cycle: it reads every change applied so far."""
        self._cycle_at = now
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    async def run(self) -> None:
        """Watch until cancelled (a StoreError restarts it; see the contract)."""
        breaks = 0
        while True:
            try:
                rev = self.mirror.resume_after()  # no range read (and no gap) when the mirror holds one
                if rev is None:
                    _, rev = await self.store.range(self.keys.leader, self.keys.leader + "\0")
                self.mirror.watching(rev)
                async for ev in self.store.watch(self.mirror.start, rev + 1, resume=False,
                                                 range_end=self.mirror.end):
                    breaks = 0
                    self.mirror.apply(ev)
                    self._changed(ev)
            except WatchCompacted as e:
                log.debug("watch restarting from a fresh read: %s", e)
                self.mirror.forget()
            except StoreError as e:
                log.debug("watch restarting: %s", e)
                breaks += 1
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(breaks, 5)) * self._jitter.uniform(0.5, 1.0))
            finally:
                self.mirror.stopped()

    def _changed(self, ev: WatchEvent) -> None:
        key = ev.key
        if key.startswith(self.keys.payloads):
            if ev.type == "delete":
                self.on_payload_gone(key)
            return
        wait = self._cycle_at + SETTLE - self._now()
        if wait <= 0 or key in self._urgent or key.startswith(self.keys.fencing):
            self._wake()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._settled)

    def _settled(self) -> None:
        self._deferred = None
        self._wake()
