"""What the router knows about nodes, from two independent sources:

- etcd: member records (inference URL and readiness) and decided states,
  read once and then followed with a watch. When etcd is unreachable the
  router keeps the membership it last saw (the data path never waits for
  consensus) and retries in the background.
- heartbeats: the router is an *observer* in every agent's config; its own
  phi detector marks a node suspected within ~250 ms of its death, long
  before etcd's lease could expire.

Every change that makes a backend ineligible calls `on_eject(name, cause)`
so in-flight attempts on it are abandoned and retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vigil.clock import Clock
from vigil.core.peers import ALIVE, TICK, PeerTable, PeerWatch
from vigil.core.routing import DEGRADED_WEIGHT, RoutingTable
from vigil.errors import StoreError, VigilError, WatchCompacted
from vigil.net.transport import HeartbeatReceiver, HeartbeatTransport
from vigil.net.wire import Heartbeat
from vigil.router.config import RouterConfig
from vigil.store.base import Store, WatchEvent, prefix_end
from vigil.store.keys import Keys
from vigil.store.member_record import BadRecord, MemberRecord, parse_member

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, cfg: RouterConfig, store: Store, table: RoutingTable, clock: Clock,
                 on_eject: Callable[[str, str], None], on_change: Callable[[str, str], None]):
        self.cfg, self.store, self.table, self.clock = cfg, store, table, clock
        self.on_eject, self.on_change = on_eject, on_change
        self.keys = Keys(cfg.cluster)
        self.peers = PeerTable([], cfg.timing.detector(), cfg.timing.rise)
        self.receiver = HeartbeatReceiver(cfg.cluster, cfg.name, cfg.keys.ring, {}, clock.wall,
                                          cfg.keys.max_clock_skew)
        self.transport = HeartbeatTransport(self.receiver, [cfg.heartbeat_address], cfg.heartbeat_port,
                                            {}, self._deliver)
        self.watch = PeerWatch(self.peers)
        self.etcd_ok = False
        self.bad_records: dict[str, str] = {}  # key -> what is wrong with it
        self.failures = 0  # membership loop errors survived
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.transport.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._etcd_loop()), loop.create_task(self._tick_loop()),
                       loop.create_task(self._etcd_probe_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.transport.close()

    def reload_keys(self) -> bool:
        """Read the key ring again (SIGHUP); a ring that does not load changes nothing."""
        try:
            keys = self.cfg.keys.reload()
        except VigilError as e:
            log.error("key ring not reloaded, the old one stays in use: %s", e)
            return False
        self.receiver.ring = keys.ring
        log.info("key ring reloaded: %s", {n: sorted(ids) for n, ids in keys.ring.members.items()})
        return True

    # -- etcd ------------------------------------------------------------------
    async def _etcd_loop(self) -> None:
        while True:
            try:
                # Everything but the event log: members, states, leader (keys after "events/").
                kvs, rev = await self.store.range(self.keys.prefix + "events0",
                                                  prefix_end(self.keys.prefix))
                for kv in kvs:
                    self._apply(WatchEvent("put", kv.key, kv.value, kv.mod_revision))
                self._forget_missing({kv.key for kv in kvs})
                self.etcd_ok = True
                async for ev in self.store.watch(self.keys.prefix, rev + 1):
                    self._apply(ev)
            except (StoreError, WatchCompacted) as e:
                if self.etcd_ok:
                    log.warning("etcd unreachable, routing on the last membership: %s", e)
                self.etcd_ok = False
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - the membership must outlive any one bad event
                log.exception("membership update failed; re-reading the membership")
                self.failures += 1
                await asyncio.sleep(0.5)

    async def _etcd_probe_loop(self) -> None:
        """A watch reconnects silently; this says whether etcd answers at all."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.store.get(self.keys.leader)
                ok = True
            except StoreError as e:
                ok = False
                if self.etcd_ok:
                    log.warning("etcd unreachable, routing on the last membership: %s", e)
            self.etcd_ok = ok

    def _apply(self, ev: WatchEvent) -> None:
        k = self.keys
        if ev.key.startswith(k.members):
            name = ev.key[len(k.members):]
            self._track(name)
            if ev.type == "delete":
                self.table.backend(name).gone = True
                self._set(name, ready=False, cause="member record gone (lease expired or revoked)")
                return
            rec = parse_member(name, ev.value)
            # A record must not point the router anywhere off the cluster.
            problem = rec.problem if isinstance(rec, BadRecord) else (
                self.cfg.backends.problem(rec.inference_url) if rec.inference_url else None)
            if problem or not isinstance(rec, MemberRecord):  # a record no agent wrote: no traffic until whole
                if self.bad_records.get(ev.key) != problem:
                    log.warning("ignoring member record %s: %s", ev.key, problem)
                self.bad_records[ev.key] = problem
                self._set(name, ready=False, cause=f"malformed member record: {problem}")
                return
            self.bad_records.pop(ev.key, None)
            # Heartbeats count only from the addresses the node's own record names.
            self.receiver.track(name, set(rec.heartbeat_addresses))
            inf = rec.inference or {}
            b = self.table.backend(name)
            b.gone = False
            b.url = rec.inference_url
            b.weight = DEGRADED_WEIGHT if rec.verdict == "degraded" else 1.0  # serves, less
            if rec.verdict in ("draining", "failed"):  # finish in-flight work, take none
                self._set(name, ready=False, cause=f"node {rec.verdict}: "
                                                   f"{'; '.join(rec.reasons) or 'no reason given'}")
                return
            self._set(name, ready=bool(inf.get("ready")),
                      cause=f"readiness reported: {inf.get('reason') or 'ready'}")
        elif ev.key.startswith(k.states) and ev.type == "put":
            name = ev.key[len(k.states):]
            b = self.table.backend(name)
            if b.state != ev.value:
                b.state = ev.value
                self._changed(name, f"state {ev.value}")

    def _forget_missing(self, present: set[str]) -> None:
        for name in list(self.table.backends):
            if self.keys.member(name) not in present:
                self.table.backend(name).gone = True
                self._set(name, ready=False, cause="no member record")

    def _set(self, name: str, ready: bool, cause: str) -> None:
        b = self.table.backend(name)
        if b.ready != ready:
            b.ready = ready
            self._changed(name, cause)

    # -- heartbeats ------------------------------------------------------------
    def _track(self, name: str) -> None:
        if name not in self.peers.peers:
            self.peers.add(name)

    def _deliver(self, hb: Heartbeat, link: str, verdict: str) -> None:
        for t in self.watch.deliver(hb, link, verdict, self.clock.now()):
            self._alive(t.peer, t.new == ALIVE, t.cause)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            for t in self.watch.tick(self.clock.now()):
                self._alive(t.peer, False, t.cause)

    def _alive(self, name: str, alive: bool, cause: str) -> None:
        b = self.table.backend(name)
        if b.alive != alive:
            b.alive = alive
            self._changed(name, ("alive: " if alive else "suspected: ") + cause)

    def _changed(self, name: str, cause: str) -> None:
        b = self.table.backend(name)
        reason = b.why_not(self.clock.now(), ignore_inhibition=True)
        self.on_change(name, reason or "eligible")
        if reason:
            self.on_eject(name, cause)
