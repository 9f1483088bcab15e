"""Leadership: the one owner of this node's leader role and everything that
follows it, so no caller can change the role and forget a consequence.

Every change (acquired, renewed, demoted, resigned, lost) goes through one of
the methods below; each ending is recorded exactly once, in this order:
the VIPs are removed (before the key can go), the fencing-token file is
removed, the watchdog disarmed, the history and event written, then the
change is announced (`on_change`: an immediate heartbeat, so peers waiting
to take over learn it at once, and a wake of the decision loop). An
acquisition writes the token file first (processes acting for the leader
send it), arms the watchdog and takes the VIPs.

Timing contract: `is_leader()` reads the clock every time; the role ends at
its self-demotion deadline even if nobody calls `check()` (core.leader).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Callable

from vigil.agent.history import LeadershipHistory
from vigil.agent.vips import VipHolder
from vigil.agent.watchdog import Watchdog
from vigil.clock import Clock
from vigil.core.leader import LeaderRole, RoleChange

log = logging.getLogger(__name__)

Record = Callable[..., object]  # EventLog.record


class Leadership:
    def __init__(self, node: str, demote_after: float, clock: Clock, data_dir: Path,
                 history: LeadershipHistory, watchdog: Watchdog, vips: VipHolder, record: Record):
        self.node, self.clock, self.record = node, clock, record
        self.role = LeaderRole(demote_after)
        self.history, self.watchdog, self.vips = history, watchdog, vips
        vips.valid_until = lambda: self.role.valid_until  # their kernel lifetime ends before it
        self.token_file = data_dir / "fencing-token"
        self.on_change: list[Callable[[RoleChange], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the guard's, for the heartbeat thread
        self._expired_at: float | None = None  # the deadline the heartbeat thread acted on
        # The role's fields change together under it: the heartbeat thread must never see a
        # new term's state with the last term's deadline.
        self._lock = threading.RLock()

    # -- reading -------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.role.is_leader(self.clock.now())

    @property
    def token(self) -> int:
        return self.role.token

    @property
    def state(self) -> str:
        return self.role.state

    @property
    def valid_until(self) -> float:
        return self.role.valid_until

    def remaining(self) -> float:
        return self.role.remaining(self.clock.now())

    # -- changing ------------------------------------------------------------------
    def acquire(self, token: int, lease_sent_at: float) -> bool:
        """Take the role with `token` won on a lease last acknowledged as sent at
        `lease_sent_at`; False (and nothing recorded) when that lease is already
        too old to lead on: the caller gives the key back."""
        with self._lock:
            change = self.role.acquired(token, lease_sent_at, self.clock.now())
            if not self.role.is_leader(self.clock.now()):
                self.role.resigned(self.clock.now(), "lease too old to lead on")
                return False
        self._record(change)
        return True

    def renewed(self, sent_at: float) -> None:
        """A keep-alive sent at `sent_at` was acknowledged: move the deadline. One
        acknowledged after the deadline (a starved loop read it late) ends the
        role instead: the role ended at its deadline, whoever noticed first."""
        if self.role.state != "leader":
            return
        if not self.is_leader():
            self.check()
            return
        before = self.role.valid_until
        with self._lock:
            self.role.renewed(sent_at)
        self.vips.renewed()
        if self.role.valid_until > before:
            self.history.write("renew", self.role.token, self.clock.wall(),
                               valid_until=self.clock.to_wall(self.role.valid_until))
        self.watchdog.pet()

    def resign(self, reason: str) -> int:
        """Give the role up; returns the token held (0: none)."""
        with self._lock:
            token = self.role.token if self.role.state == "leader" else 0
            change = self.role.resigned(self.clock.now(), reason)
        self._record(change)
        return token

    def lose(self, reason: str) -> None:
        with self._lock:
            change = self.role.lost(self.clock.now(), reason)
        self._record(change)

    def check(self) -> bool:
        """Self-fencing: end the role if its deadline passed; True if it just did."""
        with self._lock:
            change = self.role.check(self.clock.now())
        self._record(change)
        return change is not None

    def fenced(self, node: str, token: int) -> None:
        """This node powered `node` (leader with `token`) off and verified it."""
        self.history.write("fenced", token, self.clock.wall(), node=node, by=self.node)
        self.vips.previous_holder_fenced()

    # -- the one place a change is recorded -------------------------------------------
    def _record(self, change: RoleChange | None) -> None:
        """Write the change down, then tell every hook: the hooks run even when the
        writing fails (a full disk must not keep the actuator writer or the heartbeats
        from learning that the role ended), and one hook that raises is logged and
        does not keep the others from running. A failed write still raises."""
        if change is None:
            return
        try:
            self._write(change)
        finally:
            for hook in self.on_change:
                try:
                    hook(change)
                except Exception:  # noqa: BLE001 - every part must hear of the change
                    log.exception("a hook on leadership %s (token %d) failed", change.kind, change.token)

    def _write(self, change: RoleChange) -> None:
        wall = self.clock.to_wall(change.at)
        if change.kind == "acquired":
            self.token_file.write_text(f"{change.token}\n")
            self.history.write("start", change.token, wall,
                               valid_until=self.clock.to_wall(self.role.valid_until))
            self.record("leader_elected", f"{self.node} leads with token {change.token}: {change.reason}",
                        token=change.token)
            self.watchdog.arm()  # required and unusable: unhealthy now, so it resigns next cycle
            self.vips.acquired()
        else:
            self.vips.released(f"{change.kind}: {change.reason}")
            self.token_file.unlink(missing_ok=True)
            self.watchdog.disarm()
            self.history.write("end", change.token, wall, kind=change.kind, reason=change.reason)
            self.record(f"leader_{change.kind}", f"{self.node} stopped leading (token {change.token}): "
                        f"{change.reason}", token=change.token)

    # -- the heartbeat thread's part (vigil.net.pacer): any thread may call these ----------
    def deadline(self) -> float | None:
        """The self-demotion deadline while leading, until the heartbeat thread acted on it."""
        with self._lock:
            until = self.role.valid_until
            return until if self.role.state == "leader" and self._expired_at != until else None

    def expire_on_thread(self) -> None:
        """Called by the heartbeat thread at the deadline, whatever the loop is doing
        (starved, paging): the fencing-token file goes at once (what acts for the
        leader presents it), then the loop records the ending (`check`) when it runs.
        The VIPs went earlier: the kernel ends their lifetime before the deadline."""
        with self._lock:  # the loop cannot start a new term between the check and the unlink
            until = self.role.valid_until
            if self.role.state != "leader" or self.clock.now() < until or self._expired_at == until:
                return
            self._expired_at = until
            self.token_file.unlink(missing_ok=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.check)

    async def guard(self) -> None:
        """Self-fencing: demote at the role's deadline, even if etcd hangs. The guard
        sleeps until the deadline (a renewal moves it: the guard sleeps on to the
        new one) or until the role changes; a process stopped past the deadline
        demotes the moment it runs again (its overdue timer fires first thing)."""
        self._loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        self.on_change.append(lambda change: changed.set())
        while True:
            changed.clear()
            if self.state != "leader":
                await changed.wait()
                continue
            try:
                async with asyncio.timeout(self.remaining()):
                    await changed.wait()
            except TimeoutError:
                pass
            self.check()
