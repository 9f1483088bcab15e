"""A cluster of real agents (vigil.agent.daemon.Agent: its reconciler,
election, session, detector, role guard) on one in-memory store, one
in-memory heartbeat network and one FakeClock, driven by SimLoop, with
seeded faults: SIGKILL and restart, SIGSTOP (often past the lease TTL), a
node cut from etcd, a node cut from its peers, and slow and lost replies on
every store call.

`SimCluster(seed, root).run(seconds)` returns a `SimResult`: every
leadership interval from the agents' own history files, the overlaps found
between them (the safety invariant: none), and the faults injected. The
same seed injects the same faults at the same virtual instants.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from vigil.agent.daemon import Agent
from vigil.agent.history import read_records
from vigil.core.history import Interval, intervals, overlaps
from vigil.config import NodeConfig, parse_config
from vigil.errors import StoreUnavailable, WireError
from vigil.identity import KeyRing
from vigil.store.base import Store, WatchEvent
from vigil.testing.clock import FakeClock
from vigil.testing.keys import shared_keys
from vigil.testing.memory_network import MemoryNetwork
from vigil.testing.memory_store import MemoryStore
from vigil.testing.sim_loop import KILLED, STOPPED, SimLoop, SimProcess

# Timers of a cluster whose heartbeats cross a WAN: one every 5 s, the
# detector evaluated every 2.5 s, a reconciler cycle at least every 5 s (and
# on every watch event). The lease timers (TTL 10 s, keep-alive 2.5 s,
# demote_after 8 s, etcd timeout 1 s) are the defaults: the overlap invariant
# rests on them, not on heartbeat speed, and slower heartbeats keep an hour
# to about ten wake-ups a virtual second for the whole cluster.
SIM_TIMING = {"heartbeat_interval": 5.0, "heartbeat_copies": 1, "acceptable_pause": 5.0,
              "min_std_deviation": 0.1, "lease_ttl": 10, "keepalive_interval": 2.5,
              "demote_after": 8.0, "etcd_timeout": 1.0, "loop_interval": 5.0}
SIM_TICK = 2.5  # s: the detector's evaluation period with 5 s heartbeats


class RecallingRing(KeyRing):
    """The cluster's key ring with Ed25519 verification remembered per
    (node, key id, message, signature): verification is a pure function of
    those bytes, so the outcome is the one the real check gives, and the
    second peer that receives a heartbeat does not pay for it again (a third
    of a simulated hour's CPU was signature checks). Shared by every node."""

    def __init__(self, members: dict):
        super().__init__(members)
        self._seen: dict[tuple, WireError | None] = {}

    def verify(self, node: str, key_id: int, data: bytes, signature: bytes) -> None:
        key = (node, key_id, data, signature)
        if key not in self._seen:
            if len(self._seen) > 4096:
                self._seen.clear()
            try:
                super().verify(node, key_id, data, signature)
                self._seen[key] = None
            except WireError as e:
                self._seen[key] = e
        if self._seen[key] is not None:
            raise self._seen[key]


class LinkedStore(Store):
    """One node's link to the shared store: it can be cut (every call fails as
    etcd unreachable), a share of the calls is slow (request and reply each
    take up to `latency`: the store applies a keep-alive later than it was
    sent, and the client learns of it later still), and a reply can be lost
    after the store applied the request (the client never learns that its
    keep-alive or write landed)."""

    def __init__(self, store: MemoryStore, rng: random.Random, latency: float = 0.3, slow: float = 0.2,
                 lost: float = 0.02, traffic: collections.Counter | None = None):
        """`traffic`: counts each request by operation, "watch" per watch opened and
        "watch_event" per event delivered (shared by a cluster's links: its load on etcd)."""
        self.store, self.rng, self.latency, self.slow, self.lost = store, rng, latency, slow, lost
        self.traffic = collections.Counter() if traffic is None else traffic
        self._reachable = True
        self._cut: asyncio.Future[None] | None = None  # set when the link is cut: watches end

    @property
    def reachable(self) -> bool:
        return self._reachable

    @reachable.setter
    def reachable(self, value: bool) -> None:
        self._reachable = value
        if not value and self._cut is not None and not self._cut.done():
            self._cut.set_result(None)
        elif value:
            self._cut = None

    async def _call(self, op: Any, *args: Any) -> Any:
        self.traffic[op.__name__] += 1
        self._check()
        slow = self.rng.random() < self.slow
        if slow:
            await asyncio.sleep(self.rng.uniform(0, self.latency))
            self._check()
        result = await op(*args)
        if self.rng.random() < self.lost:
            raise StoreUnavailable("simulated: the reply was lost")
        if slow:
            await asyncio.sleep(self.rng.uniform(0, self.latency))
            self._check()
        return result

    def _check(self) -> None:
        if not self.reachable:
            raise StoreUnavailable("simulated: this node is cut from etcd")

    async def get(self, key):
        return await self._call(self.store.get, key)

    async def range(self, prefix, end=None):
        return await self._call(self.store.range, prefix, end)

    async def put(self, key, value, lease=0):
        return await self._call(self.store.put, key, value, lease)

    async def delete(self, key):
        return await self._call(self.store.delete, key)

    async def create(self, key, value, lease=0):
        return await self._call(self.store.create, key, value, lease)

    async def delete_if_created(self, key, create_revision):
        return await self._call(self.store.delete_if_created, key, create_revision)

    async def txn(self, expect, puts, deletes=()):
        return await self._call(self.store.txn, expect, puts, deletes)

    async def delete_prefix(self, prefix):
        return await self._call(self.store.delete_prefix, prefix)

    async def grant(self, ttl):
        return await self._call(self.store.grant, ttl)

    async def keepalive(self, lease_id):
        return await self._call(self.store.keepalive, lease_id)

    async def revoke(self, lease_id):
        return await self._call(self.store.revoke, lease_id)

    async def lease_left(self, lease_id):
        return await self._call(self.store.lease_left, lease_id)

    async def watch(self, prefix: str, start_revision: int, resume: bool = True,
                    range_end: str | None = None) -> AsyncIterator[WatchEvent]:
        """A cut link ends the stream: at its next event, or at once for a watch
        that does not resume (its owner must learn it may be behind)."""
        self.traffic["watch"] += 1
        self._check()
        events = self.store.watch(prefix, start_revision, resume, range_end).__aiter__()
        while True:
            if resume:
                ev = await events.__anext__()
            else:
                ev = await self._unless_cut(events.__anext__())
            self._check()
            self.traffic["watch_event"] += 1
            yield ev

    async def _unless_cut(self, step: Any) -> WatchEvent:
        self._check()
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
        nxt = asyncio.ensure_future(step)
        try:
            await asyncio.wait({nxt, self._cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not nxt.done():
                nxt.cancel()
        if nxt.cancelled():
            raise StoreUnavailable("simulated: this node is cut from etcd")
        return nxt.result()

    async def compact(self, revision):
        return await self._call(self.store.compact, revision)

    async def close(self) -> None:
        pass


@dataclass
class SimResult:
    seed: int
    intervals: list[Interval]
    overlaps: list[tuple[Interval, Interval]]
    faults: list[str] = field(default_factory=list)
    leaders_at_end: list[str] = field(default_factory=list)

    def tokens_increase(self) -> bool:
        """Each new term (by start time) holds a greater token than every earlier one."""
        ordered = sorted(self.intervals, key=lambda i: i.start)
        return all(a.token < b.token for a, b in zip(ordered, ordered[1:]))


@dataclass
class SimNode:
    name: str
    cfg: NodeConfig
    link: LinkedStore
    agent: Agent | None = None
    proc: SimProcess | None = None
    stop: asyncio.Event | None = None


class SimCluster:
    def __init__(self, seed: int, root: Path, nodes: int = 3, timing: dict[str, Any] | None = None,
                 unchecked_timing: dict[str, Any] | None = None, topology: dict[str, Any] | None = None,
                 rack_size: int = 0):
        """`timing` is validated as an operator's config is; `unchecked_timing` is
        applied after validation (to show the simulation catches a broken relation).
        `topology`: heartbeat.topology; `rack_size`: nodes per failure domain (0: one)."""
        self.seed, self.rng = seed, random.Random(seed)
        self.clock = FakeClock()
        self.loop = SimLoop(self.clock)
        self.loop.set_exception_handler(self._loop_error)
        self.store = MemoryStore(self.clock)
        self.network = MemoryNetwork(rng=random.Random(seed + 1))
        self.faults: list[str] = []
        self.traffic: collections.Counter = collections.Counter()  # every link's requests (LinkedStore)
        self.graveyard: list[Agent] = []
        names = [f"n{i + 1}" for i in range(nodes)]
        keys = shared_keys(*names)
        shape = {"topology": topology or {}, "racks": {n: f"rack-{i // rack_size + 1}" if rack_size else "default"
                                                      for i, n in enumerate(names)}}
        self.nodes = {n: SimNode(n, self._config(n, names, root, keys, timing, unchecked_timing, shape),
                                 LinkedStore(self.store, self.rng, traffic=self.traffic))
                      for n in names}
        ring = RecallingRing(self.nodes[names[0]].cfg.keys.ring.members)
        for node in self.nodes.values():
            node.cfg = dataclasses.replace(node.cfg, keys=dataclasses.replace(node.cfg.keys, ring=ring))

    @staticmethod
    def _config(name: str, names: list[str], root: Path, keys: dict[str, Any], timing: dict[str, Any] | None,
                unchecked: dict[str, Any] | None, shape: dict[str, Any]) -> NodeConfig:
        addr = {n: f"10.231.{9 + i // 250}.{i % 250 + 1}" for i, n in enumerate(names)}  # (past 250 nodes)
        racks = shape["racks"]
        cfg = parse_config({
            "cluster": "sim", "node": name, "data_dir": str(root / name), "failure_domain": racks[name],
            "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "watchdog": {"mode": "off"},
            "health": {"gpu": False, "kernel_log": False, "interval": 60},
            "heartbeat": {**keys[name], "addresses": [addr[name]], "port": 7400,
                          "peers": [{"name": p, "addresses": [addr[p]], "port": 7400,
                                     "failure_domain": racks[p]} for p in names if p != name],
                          "topology": shape["topology"]},
            "timing": {**SIM_TIMING, **(timing or {})}})
        if unchecked:
            cfg = dataclasses.replace(cfg, timing=dataclasses.replace(cfg.timing, **unchecked))
        return cfg

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A killed process's tasks are never finished; their destruction is expected.
        if "Task was destroyed but it is pending" not in context.get("message", ""):
            loop.default_exception_handler(context)

    # -- processes ---------------------------------------------------------------------
    def start(self, name: str) -> None:
        node = self.nodes[name]
        node.link = LinkedStore(self.store, random.Random(f"{self.seed}-{name}-{len(self.graveyard)}"),
                                traffic=self.traffic)
        node.agent = Agent(node.cfg, store=node.link, clock=self.clock, network=self.network,
                           serve_api=False, tick=SIM_TICK)
        self.graveyard.append(node.agent)  # see SimLoop.sigkill: no finalizer runs before reap()
        node.stop = asyncio.Event()
        node.proc = self.loop.spawn(name, node.agent.run(node.stop))

    def kill(self, name: str) -> None:
        """SIGKILL: nothing of it runs again; the kernel closes its sockets and files."""
        node = self.nodes[name]
        self.loop.sigkill(node.proc)
        node.link.reachable = False  # its connections are gone with it
        self.network.close_host(node.cfg.addresses[0])
        node.agent.history.abandon()

    def _fault(self, text: str) -> None:
        self.faults.append(f"{self.clock.now() - 1000:9.3f} {text}")

    async def _inject(self, name: str, kind: str | None = None) -> None:
        """One fault on `name` (of `kind`, else a random one), held for a random while, then undone."""
        node, rng = self.nodes[name], self.rng
        kind = kind or rng.choice(["kill", "stop", "stop_past_ttl", "cut_etcd", "cut_peers"])
        hold = rng.uniform(1.0, 25.0)
        if kind == "stop_past_ttl":
            hold = rng.uniform(node.cfg.timing.lease_ttl, 3 * node.cfg.timing.lease_ttl)
        self._fault(f"{kind} {name} for {hold:.2f} s")
        if kind == "kill":
            self.kill(name)
            await asyncio.sleep(hold)
            self.start(name)
        elif kind.startswith("stop"):
            self.loop.sigstop(node.proc)
            await asyncio.sleep(hold)
            self.loop.sigcont(node.proc)
        elif kind == "cut_etcd":
            node.link.reachable = False
            await asyncio.sleep(hold)
            node.link.reachable = True
        else:
            for other in self.nodes.values():
                if other is not node:
                    self.network.cut(node.cfg.addresses[0], other.cfg.addresses[0])
            await asyncio.sleep(hold)
            self.network.heal()

    async def _faults(self, until: float) -> None:
        """A fault every 5-60 s on a node not already under one: faults overlap
        (two nodes down at once, a pause during a partition)."""
        busy: set[str] = set()
        running: list[asyncio.Task] = []

        async def held(name: str) -> None:
            try:
                await self._inject(name)
            finally:
                busy.discard(name)
        while True:
            await asyncio.sleep(self.rng.uniform(5.0, 60.0))
            free = sorted(set(self.nodes) - busy)
            if self.clock.now() >= until:
                break
            if free:
                name = self.rng.choice(free)
                busy.add(name)
                running.append(asyncio.get_running_loop().create_task(held(name)))
        await asyncio.gather(*running)

    async def _drive(self, seconds: float, quiet: float) -> None:
        self.store.start()
        for name in self.nodes:
            self.start(name)
        await self._faults(self.clock.now() + seconds)
        await asyncio.sleep(quiet)  # every fault undone: the cluster settles on one leader

    def run(self, seconds: float, quiet: float = 30.0) -> SimResult:
        """Run `seconds` of faults, then `quiet` seconds without; the agents are
        then killed (a graceful stop would end their terms by itself)."""
        try:
            self.loop.run_until_complete(self._drive(seconds, quiet))
            leaders = sorted(n.name for n in self.nodes.values()
                             if n.proc.state not in (KILLED, STOPPED) and n.agent.is_leader())
            for name in self.nodes:
                self.kill(name)
            records = read_records(sorted(Path(n.cfg.data_dir) / "leadership.jsonl"
                                          for n in self.nodes.values()))
            self.loop.reap()
        finally:
            self.loop.close()
        ivs = intervals(records)
        return SimResult(self.seed, ivs, overlaps(ivs), self.faults, leaders)


def quiet_logs() -> None:
    """The agents log every event at INFO; a simulation of hours keeps none (it reads their history files)."""
    logging.getLogger("vigil").setLevel(logging.CRITICAL)
