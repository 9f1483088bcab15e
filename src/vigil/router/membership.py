"""What the router knows about nodes, from two independent sources:

- etcd: member records (inference URL and readiness) and decided states,
  read once and then followed with a watch. When etcd is unreachable the
  router keeps the membership it last saw (the data path never waits for
  consensus) and retries in the background.
- heartbeats: the router is an *observer* in every agent's config; its own
  phi detector marks a node suspected within ~250 ms of its death, long
  before etcd's lease could expire.

A record in etcd is a claim, an authentic heartbeat is evidence. By default
(`membership: heard`) a node gets traffic only if its name is in the key
ring, the router has heard it at least once, and its inference URL lies in
the cluster's networks (those its members' heartbeats come from, unless
`backends.allow` says otherwise: vigil.core.allowlist). `membership:
etcd_only` routes on member records alone, to `backends.allow`, for agents
that do not send the router heartbeats.

Every record is untrusted: each is applied under its own guard, so one that
does not parse or cannot be applied is named once in `bad_records` (by key)
and skipped, and the rest are learnt and the watch starts regardless.

Memory is bounded whatever an etcd writer invents: the routing table, the
peer table, the heartbeat guards and the per-node metric labels hold only
key-ring names (kept when their record goes: their decided state and
detector history stay) and, under etcd_only, at most MAX_OTHER_NAMES other
names at once, each forgotten when its record goes; `bad_records` lists at
most MAX_BAD_RECORDS keys and counts the rest (`bad_unlisted`).

Every change that makes a backend ineligible calls `on_eject(name, cause)`
so in-flight attempts on it are abandoned and retried elsewhere; every
change of eligibility calls `on_change(name, why_not or "eligible")`, and
`on_change(name, FORGOTTEN)` when a name is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

from vigil.clock import Clock
from vigil.core.allowlist import ClusterNetworks
from vigil.core.peers import ALIVE, PeerTable, PeerTransition, PeerWatch
from vigil.core.routing import DEGRADED_WEIGHT, Backend, RoutingTable
from vigil.errors import StoreError, VigilError, WatchCompacted
from vigil.fields import NAME_RE
from vigil.net.transport import HeartbeatReceiver, HeartbeatTransport
from vigil.net.watch_loop import WatchLoop
from vigil.net.wire import Heartbeat
from vigil.router.config import RouterConfig
from vigil.router.metrics import MembershipState
from vigil.store.base import Store, WatchEvent, prefix_end
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import BadRecord, parse_member_kv, parse_state
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_OTHER_NAMES = 256  # etcd_only: names outside the key ring tracked at once
MAX_BAD_RECORDS = 64  # keys listed in bad_records; more are only counted
MAX_SHOWN = 200  # characters of a key or a problem kept in bad_records
FORGOTTEN = "forgotten"


class Membership:
    def __init__(self, cfg: RouterConfig, store: Store, table: RoutingTable, clock: Clock,
                 on_eject: Callable[[str, str], None], on_change: Callable[[str, str], None]):
        self.cfg, self.store, self.table, self.clock = cfg, store, table, clock
        self.on_eject, self.on_change = on_eject, on_change
        self.keys = Keys(cfg.cluster)
        self.etcd_only = cfg.membership == "etcd_only"
        self.peers = PeerTable([], cfg.timing.detector(), cfg.timing.rise)
        self.receiver = HeartbeatReceiver(cfg.cluster, cfg.name, cfg.keys.ring, {}, clock.wall,
                                          cfg.keys.max_clock_skew, clock.now, cfg.timing.heartbeat_interval)
        self.transport = HeartbeatTransport(self.receiver, [cfg.heartbeat_address], cfg.heartbeat_port,
                                            {}, self._deliver)
        self.watch = PeerWatch(self.peers)
        self.looking = WatchLoop(self.watch, clock.now, self._looked)
        self.networks = ClusterNetworks()
        self._heard_from: dict[str, set[str]] = {}  # name -> heartbeat sources already in `networks`
        self.states: dict[str, str] = {}  # decided state by name, for names the router may track
        self.others: set[str] = set()  # tracked names outside the key ring (etcd_only), at most MAX_OTHER_NAMES
        self.etcd_ok = False
        self.bad_records: dict[str, str] = {}  # key -> what is wrong with it
        self.bad_unlisted = 0  # bad records past MAX_BAD_RECORDS, counted only
        self.failures = 0  # membership loop errors survived
        self._etcd_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.transport.start()
        loop = asyncio.get_running_loop()
        self._etcd_task = loop.create_task(self._etcd_loop())
        self._tasks = [loop.create_task(self.looking.run()), loop.create_task(self._etcd_probe_loop())]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, self._etcd_task)
        self.transport.close()

    def state(self) -> MembershipState:
        """The members as the router's status shows them (vigil.router.metrics)."""
        r = self.receiver
        return MembershipState(self.etcd_ok, r.counters, r.ring.members, self.networks.networks(),
                               self.bad_records, self.bad_unlisted, self.failures)

    def reload_keys(self) -> bool:
        """Read the key ring again (SIGHUP); a ring that does not load changes
        nothing. Names that left the ring are forgotten, and the membership is
        read again so that names that joined it are learnt."""
        try:
            keys = self.cfg.keys.reload()
        except VigilError as e:
            log.error("key ring not reloaded, the old one stays in use: %s", e)
            return False
        self.receiver.ring = keys.ring
        log.info("key ring reloaded: %s", {n: sorted(ids) for n, ids in keys.ring.members.items()})
        if not self.etcd_only:
            for name in [n for n in self.table.backends if n not in keys.ring.members]:
                self._forget(name, "no longer in the key ring")
        self.others = {n for n in self.table.backends if n not in keys.ring.members}
        if self._etcd_task is not None:  # re-read: records ignored before may count now
            self._etcd_task.cancel()
            self._etcd_task = asyncio.get_running_loop().create_task(self._etcd_loop())
        return True

    # -- etcd ------------------------------------------------------------------
    async def _etcd_loop(self) -> None:
        while True:
            try:
                # Everything but the event log: members, states, leader (keys after "events/").
                kvs, rev = await self.store.range(self.keys.prefix + "events0",
                                                  prefix_end(self.keys.prefix))
                for kv in kvs:
                    self._apply_guarded(WatchEvent("put", kv.key, kv.value, kv.mod_revision))
                self._forget_missing({kv.key for kv in kvs})
                self.etcd_ok = True
                async for ev in self.store.watch(self.keys.prefix, rev + 1):
                    self._apply_guarded(ev)
            except (StoreError, WatchCompacted) as e:
                if self.etcd_ok:
                    log.warning("etcd unreachable, routing on the last membership: %s", e)
                self.etcd_ok = False
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - the membership must outlive any one failure
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

    def _apply_guarded(self, ev: WatchEvent) -> None:
        """Apply one record; whatever it holds, it costs only itself."""
        try:
            self._apply(ev)
        except Exception as e:  # noqa: BLE001 - a record no parser foresaw still stops only itself
            self._bad(ev.key, f"could not be applied: {type(e).__name__}: {e}")
            name = ev.key[len(self.keys.members):]
            if ev.key.startswith(self.keys.members) and name in self.table.backends:
                with contextlib.suppress(Exception):
                    self._set(name, "member record could not be applied", self.table.ready, False)

    def _apply(self, ev: WatchEvent) -> None:
        k = self.keys
        if ev.key.startswith(k.members):
            self._member(ev, ev.key[len(k.members):])
        elif ev.key.startswith(k.states):
            self._state(ev, ev.key[len(k.states):])

    def _member(self, ev: WatchEvent, name: str) -> None:
        if ev.type == "delete":
            self._unbad(ev.key)
            if name in self.table.backends:
                self._went(name, "member record gone (lease expired or revoked)")
            return
        why_not = self._untracked(name)
        if why_not:  # not even a backend: nothing of it is kept but this line
            self._bad(ev.key, why_not)
            return
        rec = parse_member_kv(ev.key, ev.value)
        # A record must not point the router anywhere off the cluster.
        problem = rec.problem if isinstance(rec, BadRecord) else (
            self.cfg.backends.problem(rec.inference_url) if rec.inference_url else None)
        if problem or not isinstance(rec, MemberRecord):  # a record no agent wrote: no traffic until whole
            self._bad(ev.key, problem or "not a member record")
            self._set(name, f"malformed member record: {problem}", self.table.ready, False)
            return
        self._unbad(ev.key)
        # Heartbeats count only from the addresses the node's own record names.
        self.receiver.track(name, set(rec.heartbeat_addresses))
        self.receiver.expect(name, rec.incarnation)  # only the node writes it: its restart is heard under a flood
        self.peers.add(name)
        self._backend(name)
        self.table.member(name, rec.inference_url,
                          DEGRADED_WEIGHT if rec.verdict == "degraded" else 1.0)  # degraded: serves, less
        self._judge_url(self.table.backend(name))
        if rec.verdict in ("draining", "failed"):  # finish in-flight work, take none
            self._set(name, f"node {rec.verdict}: {'; '.join(rec.reasons) or 'no reason given'}",
                      self.table.ready, False)
            return
        inf = rec.inference or {}
        self._set(name, f"readiness reported: {inf.get('reason') or 'ready'}", self.table.ready,
                  bool(inf.get("ready")))

    def _state(self, ev: WatchEvent, name: str) -> None:
        if ev.type == "delete":
            self.states.pop(name, None)
            return
        if name not in self.states and self._untracked(name, len(self.states)):
            return
        state = parse_state(ev.key, ev.value)
        if isinstance(state, BadRecord):
            self._bad(ev.key, state.problem)
            return
        self._unbad(ev.key)
        self.states[name] = state
        if name in self.table.backends:
            self._set(name, f"state {state}", self.table.state, state)

    def _untracked(self, name: str, others: int | None = None) -> str | None:
        """Why `name` may not be tracked (its record is ignored), or None.
        `others`: the count held against MAX_OTHER_NAMES, if not the tracked
        names outside the ring (the decided states pass their own)."""
        ring = self.receiver.ring.members
        if name in self.table.backends or name in ring:
            return None
        if not self.etcd_only:
            return ("not in the key ring: membership: heard routes only to key-ring members "
                    "(add its key with vigil keygen, or set membership: etcd_only)")
        if not NAME_RE.fullmatch(name):
            return "not a node name (1-64 letters, digits, '.', '_' or '-')"
        if (len(self.others) if others is None else others) >= MAX_OTHER_NAMES:
            return f"more than {MAX_OTHER_NAMES} member names outside the key ring at once"
        return None

    def _forget_missing(self, present: set[str]) -> None:
        for key in [key for key in self.bad_records if key not in present]:
            self._unbad(key)
        for name in list(self.table.backends):
            if self.keys.member(name) not in present:
                self._went(name, "no member record")

    def _went(self, name: str, cause: str) -> None:
        """`name`'s record is gone: a key-ring member is kept (gone), any other forgotten."""
        if name in self.receiver.ring.members:
            self._set(name, cause, self.table.went)
        else:
            self._forget(name, cause)

    def _forget(self, name: str, cause: str) -> None:
        self._set(name, cause, self.table.went)  # ejects what is in flight there
        self.table.forget(name)
        self.others.discard(name)
        self.peers.remove(name)
        self.receiver.untrack(name)
        self._heard_from.pop(name, None)
        self.states.pop(name, None)
        if self.networks.forget(name):
            self._judge_urls()
        self.on_change(name, FORGOTTEN)

    def _bad(self, key: str, problem: str) -> None:
        key, problem = key[:MAX_SHOWN], problem[:MAX_SHOWN]
        if self.bad_records.get(key) == problem:
            return
        if key not in self.bad_records and len(self.bad_records) >= MAX_BAD_RECORDS:
            self.bad_unlisted += 1
            if self.bad_unlisted == 1:
                log.warning("more than %d bad member records: the rest are counted, not listed",
                            MAX_BAD_RECORDS)
            return
        log.warning("ignoring record %s: %s", key, problem)
        self.bad_records[key] = problem

    def _unbad(self, key: str) -> None:
        self.bad_records.pop(key[:MAX_SHOWN], None)

    # -- backends --------------------------------------------------------------
    def _backend(self, name: str) -> None:
        """`name` is a backend from now on, if it was none."""
        if name not in self.table.backends:
            if name not in self.receiver.ring.members:
                self.others.add(name)
            # etcd_only: the record alone vouches for the node
            self.table.backend(name, self.states.get(name, "standby"), heard=self.etcd_only)

    def _judge_url(self, b: Backend) -> None:
        refused = self.cfg.backends.outside(b.url, self.networks) if b.url else None
        self._set(b.name, f"URL {b.url}: {refused or 'inside the cluster networks'}", self.table.refuse,
                  refused or "")

    def _judge_urls(self) -> None:
        for b in list(self.table.backends.values()):
            self._judge_url(b)

    def _set(self, name: str, cause: str, event: Callable[..., bool], *args: Any) -> None:
        """Feed the table `event(name, *args)` about `name` (a backend from now
        on), and tell the router if it changed anything."""
        self._backend(name)
        if event(name, *args):
            self._changed(name, cause)

    # -- heartbeats ------------------------------------------------------------
    def _deliver(self, hb: Heartbeat, link: str, verdict: str, at: float | None = None) -> None:
        seen = self._heard_from.setdefault(hb.node, set())
        if link not in seen:
            seen.add(link)
            if self.networks.heard(hb.node, link):
                self._judge_urls()
        changes = self.watch.deliver(hb, link, verdict, self.clock.now() if at is None else at)
        self.looking.poke()
        for t in changes:
            if t.new == ALIVE:
                self._set(t.peer, f"alive: {t.cause}", self.table.heard, True)
            else:
                self._set(t.peer, f"suspected: {t.cause}", self.table.heard, False)

    def _looked(self, changes: list[PeerTransition]) -> None:
        for t in changes:
            self._set(t.peer, f"suspected: {t.cause}", self.table.heard, False)

    def _changed(self, name: str, cause: str) -> None:
        b = self.table.backend(name)
        reason = b.why_not(self.clock.now(), ignore_inhibition=True)
        self.on_change(name, reason or "eligible")
        if reason:
            self.on_eject(name, cause)
