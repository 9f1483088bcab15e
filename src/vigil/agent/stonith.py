"""Fast, safe takeover: power the suspected leader off through its fencing
devices (levels tried in order), verify it is off, revoke its lease (its
leader key and member record vanish at once), mark it `fenced`. Only then
may this node campaign. If no level can confirm the power-off, the node is
marked blocked in etcd (it is marked so from the first attempt, so nobody
campaigns while a fence is in flight) and nobody takes its roles until an
operator runs `vigil fence NODE --confirm-off`: a node that was not confirmed dead is never
assumed dead. Every step is an event with its timing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vigil.agent.leadership import Leadership
from vigil.clock import Clock
from vigil.core.view import LeaderInfo
from vigil.errors import StoreError
from vigil.stonith.devices import FencingFailed, make_device
from vigil.store.base import Store
from vigil.store.registry import Registry

log = logging.getLogger(__name__)


SESSION_CHECK = 10.0  # s: well inside the 60 s a BMC keeps an idle session (IPMI 2.0, 13.14)
# A new leader's BMC session is opened this long after the leader changed: starting
# ipmitool and its RMCP+ handshake take tens of ms of CPU, which a takeover's last
# steps (the VIP, the first answers from the new holder) need more on a small node.
FOLLOW_DELAY = 1.0


class Fencer:
    def __init__(self, node: str, topology: dict[str, Any], clock: Clock, record: Any, registry: Registry,
                 store: Store, leadership: Leadership, keep_sessions: bool = True):
        self.node, self.clock, self.record = node, clock, record
        self.registry, self.store, self.leadership = registry, store, leadership
        self.devices = {n: [make_device(spec) for spec in levels] for n, levels in topology.items()}
        self.keep_sessions = keep_sessions
        self._warm_for: str | None = None
        self._warm_task: asyncio.Task | None = None
        self.completing: set[str] = set()  # fenced nodes whose state and marker are still being written
        self._marking: set[asyncio.Task] = set()  # the tasks writing those

    def follow(self, leader: str | None) -> None:
        """Keep a session open to the first device of `leader` (the node this one
        would fence), opened FOLLOW_DELAY s after the leader changed and checked
        every SESSION_CHECK s; close the previous leader's. Only one BMC per
        standby: a BMC serves a handful of sessions at a time. (A fence of a
        leader younger than FOLLOW_DELAY opens its own session, as without
        `keep_sessions`.)"""
        target = leader if self.keep_sessions and leader != self.node and leader in self.devices else None
        if target == self._warm_for:
            return
        self._warm_for = target
        if self._warm_task:
            self._warm_task.cancel()
        self._warm_task = (asyncio.get_running_loop().create_task(self._keep_session(target))
                           if target else None)

    async def _keep_session(self, node: str) -> None:
        device, reachable = self.devices[node][0], None
        try:
            await asyncio.sleep(FOLLOW_DELAY)
            while True:
                try:
                    await device.open_session()
                    await device.status()
                    ok, why = True, ""
                except FencingFailed as e:
                    ok, why = False, str(e)
                if ok != reachable:
                    reachable = ok
                    self.record("fence_device_reachable" if ok else "fence_device_unreachable",
                                f"{device.name} (fences {node}) " + ("answers" if ok else
                                f"does not answer: {why}; a fence of {node} would fail at this level"),
                                subject=node, device=device.name)
                await asyncio.sleep(SESSION_CHECK)
        finally:
            await asyncio.shield(device.close())

    async def _mark_fenced(self, node: str) -> None:
        try:
            await self.registry.fenced(node)  # lifts our marker too
        except StoreError as e:
            self.record("fencing_incomplete", f"{node} is off and its lease revoked, but its state could "
                        f"not be set to fenced ({e}); the leader marks it failed instead", subject=node)
        finally:
            self.completing.discard(node)

    async def stop(self) -> None:
        self.follow(None)
        for levels in self.devices.values():
            for device in levels:
                await device.close()

    async def fence_leader(self, leader: LeaderInfo, reason: str, my_lease: int) -> bool:
        """True once `leader` is confirmed off and its lease revoked."""
        t0 = self.clock.now()
        self.record("fencing_started", f"fencing {leader.name}: {reason}", subject=leader.name,
                    token=leader.token)
        # Hold everyone else back while we fence: if the lease expires meanwhile, no one may
        # take the role of a node that is not yet confirmed off. Under our lease: if we die
        # or lose etcd mid-fence the marker goes with us; if we abandon the attempt (an etcd
        # error, a revoke that failed) the next reconcile cycle removes it. Written before any
        # device acts, never beside it: a fencer cut off from etcd decided on a view that may
        # be stale (the chaos run saw an isolated standby count an old suspicion and power a
        # healthy leader off while its marker write was still timing out). One etcd write.
        await self.registry.block_fencing(
            leader.name, {"reason": f"fencing in progress by {self.node}", "state": "in_progress",
                          "by": self.node, "at": self.clock.wall()}, my_lease)
        errors = []
        for level, device in enumerate(self.devices[leader.name], start=1):
            try:
                await device.fence()
            except FencingFailed as e:
                errors.append(f"level {level} ({device.name}): {e}")
                self.record("fencing_level_failed", str(e), subject=leader.name, level=level)
                continue
            return await self._confirmed(leader, device.name, level,
                                         round((self.clock.now() - t0) * 1000, 1))
        why = "; ".join(errors)
        await self.registry.block_fencing(leader.name, {"reason": why, "state": "failed", "by": self.node,
                                                        "at": self.clock.wall()})
        self.record("fencing_failed", f"could not confirm {leader.name} is off ({why}); its roles stay "
                    f"blocked. Power it off by hand, then run `vigil fence {leader.name} --confirm-off`",
                    subject=leader.name)
        return False

    async def _drop_leader_key(self, leader: LeaderInfo) -> bool:
        try:
            await self.store.delete_if_created(self.registry.keys.leader, leader.token)
        except StoreError:
            return False
        return True  # deleted now, or gone already: either way not the fenced node's any more

    async def _confirmed(self, leader: LeaderInfo, device: str, level: int, ms: float) -> bool:
        # From here the old leader cannot act: its leadership ended no later than now.
        self.leadership.fenced(leader.name, leader.token)
        ended = "lease revoked"
        try:
            await self.store.revoke(leader.lease)
        except StoreError as e:
            # etcd revokes a lease only for a user who may write every key bound to it, and a
            # node's role (vigil.store.etcd_auth) may not write another's member record: the
            # leader key, all the takeover needs, goes instead (only the incarnation fenced).
            if "permission denied" not in str(e) or not await self._drop_leader_key(leader):
                self.record("fencing_incomplete", f"{leader.name} is off but its lease could not be "
                            f"revoked yet ({e}); it will expire", subject=leader.name)
                return False
            ended = "leader key removed (its etcd role may not revoke the lease, which expires)"
        # The node's `fenced` state is bookkeeping, not part of the takeover: written beside it.
        self.completing.add(leader.name)
        task = asyncio.get_running_loop().create_task(self._mark_fenced(leader.name))
        self._marking.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._marking.discard)
        self.record("node_fenced", f"{leader.name} powered off by {device} and verified off in "
                    f"{ms:.0f} ms; {ended}", subject=leader.name, device=device,
                    level=level, fence_ms=ms, token=leader.token)
        return True
