"""The leader's virtual IPs as a resource of this node (vigil.resources.vip).

Contract:
- On acquiring leadership each VIP is probed for a duplicate (not when this
  node verified the previous holder powered off a moment ago: that holder is
  proven silent, and a foreign host on the address would have been found
  when the address was first taken; the probe would only add `probe_wait`
  to the outage). Then, unless the current deadline already leaves a whole
  second, a keep-alive is sent at once (`renew_now`) and, when it is
  acknowledged, the VIP is added with a kernel lifetime that ends before the
  self-demotion deadline (vigil.core.vip) and announced with
  `announce_count` gratuitous ARPs. (Waiting for the next scheduled
  keep-alive would cost up to a keep-alive interval: a deadline older than
  0.1 s leaves no whole second.)
- Every acknowledged keep-alive refreshes the lifetime; when no whole second
  fits before the deadline the address is removed at once (and added back
  by the next keep-alive that leaves room).
- Demotion, resignation, self-fencing and a clean stop remove it. A frozen or
  killed agent removes nothing: the kernel does, by the deadline.
- A VIP that cannot start is a `resource_start_failed` event naming the
  cause (once per cause), shown in /status, and retried with back-off (1 s
  doubling to 30 s) while this node leads. The node keeps leading without
  the VIP: the cluster's other singleton work (the actuator) must not stop,
  or hop from node to node, for a front-door misconfiguration that every
  node may share.
- While held: the address is checked every second (re-added, with an event,
  if someone removed it) and announced again every `refresh_announce`
  seconds and whenever a peer comes back (a healed partition).

Every netlink and ARP operation runs, in order, on one worker thread: they
block, and pyroute2 cannot share the agent's (uvloop) event loop. The
lifetime is computed when the operation runs, so a queued refresh never
outlives the deadline.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from vigil.core.vip import lifetime
from vigil.resources import arp
from vigil.resources.vip import Vip, VipConfig, VipError

log = logging.getLogger(__name__)

Record = Callable[..., object]  # EventLog.record
HELD, SUSPENDED = "held", "suspended"
FENCED_RECENTLY = 5.0  # s: an acquisition this soon after our fence of the leader follows from it


def _warm_up(interfaces: set[str]) -> None:
    """Import pyroute2 (~0.2 s) and open the announcing sockets (closing one costs
    ~20 ms) now, not on a takeover's critical path."""
    try:
        from pyroute2 import IPRoute

        IPRoute().close()
        for name in sorted(interfaces):
            arp.sender(name)
    except Exception as e:  # noqa: BLE001 - the first real operation reports it properly
        log.warning("netlink or the interface not usable yet: %r", e)


class VipHolder:
    def __init__(self, configs: tuple[VipConfig, ...], now: Callable[[], float], record: Record,
                 renew_now: Callable[[], None] | None = None):
        """`renew_now`: ask for a keep-alive at once (None: wait for the next one). The role's
        deadline, `valid_until`, is set by the Leadership that holds these VIPs."""
        self.vips = [Vip(c) for c in configs]
        self.now, self.record, self.renew_now = now, record, renew_now
        self.valid_until: Callable[[], float] = lambda: float("-inf")  # no role: no lifetime
        self._fenced_at = float("-inf")  # when this node last fenced the leader (agent.fence)
        self.wanted = False  # leading: the VIPs should be up
        self.probed = False  # no other host answers: add on the next acknowledged keep-alive
        self.state = ""  # "", HELD or SUSPENDED
        self.failed: dict[str, str] = {}  # label -> cause of the last failed start
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip")
        self._task: asyncio.Task | None = None
        if self.vips:  # importing pyroute2 takes ~0.2 s: not on a takeover's critical path
            self._worker.submit(_warm_up, {c.interface for c in configs})

    @property
    def holding(self) -> bool:
        return self.state == HELD

    def describe(self) -> dict[str, object]:
        return {"vips": [v.cfg.label for v in self.vips], "holding": self.holding,
                "failed": dict(self.failed)}

    # -- leadership events (called on the event loop) -------------------------------
    def previous_holder_fenced(self) -> None:
        """This node just powered the leader off and verified it (agent.fence)."""
        self._fenced_at = self.now()

    def acquired(self) -> None:
        """Leadership began: probe every VIP (unless the previous holder was just
        fenced by us), then add them on a fresh keep-alive."""
        if not self.vips:
            return
        self.wanted = True
        if self.now() - self._fenced_at > FENCED_RECENTLY:
            self._restart(self._prepare())
            return
        # The takeover's critical path: no probe, no separate interface check (the add
        # itself fails with the cause, and a failed first add falls back to _prepare).
        self.probed = True
        if self.renew_now and lifetime(self.now(), self.valid_until()) is None:
            self.renew_now()
        else:
            self.renewed()

    def released(self, why: str) -> None:
        """Leadership ended: remove every VIP now (queued behind nothing but a probe)."""
        if not self.wanted:
            return
        self.wanted = self.probed = False
        if self._task:
            self._task.cancel()
        self._run(self._remove_all)
        if self.state:
            self.record("resource_stopped", f"VIPs removed: {why}", vips=[v.cfg.label for v in self.vips])
        self.state = ""

    def renewed(self) -> None:
        """An acknowledged keep-alive moved the deadline: add (once probed) or refresh."""
        if self.wanted and (self.state or self.probed):
            first = not self.state  # announce in the same worker call as the first add
            self._run(lambda: self._refresh_all(announce=first)).add_done_callback(self._refreshed)

    def reannounce(self) -> None:
        """Re-map every neighbour's ARP cache (a partition healed, or on a timer)."""
        if self.holding:
            self._run(self._announce_all)

    async def stop(self) -> None:
        self.released("clean stop")
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._worker, lambda: None)  # drained
        self._worker.shutdown(wait=False)

    # -- on the worker thread ---------------------------------------------------------
    def _refresh_all(self, announce: bool = False) -> str:
        seconds = lifetime(self.now(), self.valid_until())
        if seconds is None or not self.wanted:
            self._remove_all()
            return SUSPENDED
        for v in self.vips:
            v.refresh(seconds)
        if announce:
            self._announce_all()
            log.info("VIPs added with a %d s lifetime and announced", seconds)  # the takeover's timeline
        return HELD

    def _remove_all(self) -> None:
        for v in self.vips:
            v.remove()

    def _announce_all(self) -> None:
        for v in self.vips:
            try:
                v.announce()
            except OSError as e:
                log.warning("gratuitous ARP for %s failed: %s", v.cfg.label, e)

    # -- back on the loop ---------------------------------------------------------------
    def _run(self, fn: Callable[[], object]) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._worker, fn)

    def _refreshed(self, fut: asyncio.Future) -> None:
        if not self.wanted or fut.cancelled():
            return
        e = fut.exception()
        if isinstance(e, VipError):
            self._fail(self.vips[0], str(e))
            if not self.state:  # the first add failed: probe again later
                self.probed = False
                self._restart(self._prepare(delay=1.0))
            return
        if e is not None:
            log.error("VIP refresh failed: %r", e)
            return
        new = fut.result()
        if new == SUSPENDED and self.state == HELD:
            self.record("resource_suspended", "VIPs removed: the last keep-alive left less than a "
                        "whole second before the self-demotion deadline")
        elif new == HELD and self.state != HELD:
            if not self.state:
                self.record("resource_started", "VIPs held: " + ", ".join(v.cfg.label for v in self.vips),
                            vips=[v.cfg.label for v in self.vips])
                self._restart(self._watch())
            else:
                self.reannounce()
        if new == HELD:
            self.probed = False  # added: from now on refreshed as held
        self.state = new if self.state or new == HELD else ""  # not yet added: still probed

    def _restart(self, coro) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(coro)

    async def _prepare(self, delay: float = 0.0) -> None:
        """Probe until no other host answers for any VIP (back-off 1 s doubling to
        30 s); a fresh keep-alive then adds them."""
        while self.wanted:
            await asyncio.sleep(delay)
            delay = min(30.0, max(1.0, delay * 2))
            try:
                for v in self.vips:
                    await self._run(v.check)
            except VipError as e:
                self._fail(v, str(e))
                continue
            for v in self.vips:
                self.failed.pop(v.cfg.label, None)
            self.probed = True
            if self.renew_now and lifetime(self.now(), self.valid_until()) is None:
                self.renew_now()  # its acknowledgement adds them (renewed)
            else:
                self.renewed()  # the current deadline leaves a whole second
            return

    def _fail(self, v: Vip, cause: str) -> None:
        if self.failed.get(v.cfg.label) != cause:
            self.record("resource_start_failed", f"VIP {v.cfg.label} cannot start: {cause}",
                        vip=v.cfg.label)
        self.failed[v.cfg.label] = cause

    async def _watch(self) -> None:
        """Announce, then keep the addresses present and announced while held."""
        first = self.vips[0].cfg
        for _ in range(first.announce_count):
            self.reannounce()
            await asyncio.sleep(first.announce_interval)
        quiet = 0.0
        while self.wanted:
            await asyncio.sleep(1.0)
            quiet += 1.0
            if self.holding and not all([await self._run(v.held) for v in self.vips]) and self.holding:
                self.record("resource_repaired", "a VIP was removed by someone else; adding it again")
                self.renewed()
                self.reannounce()
            if first.refresh_announce and quiet >= first.refresh_announce:
                self.reannounce()
                quiet = 0.0
