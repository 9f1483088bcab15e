"""Agent: the per-node daemon.

Lifecycle: `run(stop)` starts the API, the heartbeat service, the registration
(session, lease + member record: agent/registration.py), the watch and the reconciliation loop, and returns
after a graceful stop: resign leadership, revoke the lease (so the member
record and leader key vanish at once and a successor takes over without
waiting a TTL), flush the event log.

Safety contract (DESIGN.md, self-fencing): every leader action and the
`/leader` endpoint check `role.is_leader(clock.now())` with a fresh time, so
a process frozen past its deadline stops acting the instant it runs again;
the role guard (agent/leadership.py) demotes it at the deadline itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from vigil import __version__
from vigil.agent.cluster_page import ClusterPage
from vigil.agent.health import HealthMonitor
from vigil.agent.heartbeat import HeartbeatService
from vigil.agent.history import LeadershipHistory
from vigil.agent.api import AgentApi
from vigil.agent.child import ChildProcess
from vigil.agent.controller import Controller
from vigil.agent.stonith import Fencer
from vigil.agent.payloads import PayloadPublisher
from vigil.agent.jobs import JobRunner
from vigil.agent.leadership import Leadership
from vigil.agent.status import AgentState, certificates, metrics_text, status_document
from vigil.agent.vips import VipHolder
from vigil.agent.watchdog import LinuxWatchdogDevice, Watchdog
from vigil.agent.inference import InferenceSupervisor
from vigil.agent.reconciler import Reconciler, Soundness
from vigil.agent.registration import Registration
from vigil.agent.release import FrontDoorRelease
from vigil.net.pacer import Pacer
from vigil.agent.reload import reload_config
from vigil.agent.sdnotify import Notifier, notify_loop
from vigil.clock import Clock, SystemClock
from vigil.config import NodeConfig
from vigil.core.drain_budget import DrainGate
from vigil.core.health import DEGRADED, more_severe
from vigil.core.leader import LeaderRole
from vigil.core.peers import TICK, PeerTransition
from vigil.store.base import Store
from vigil.store.drain_places import DrainPlaces
from vigil.store.etcd import EtcdStore
from vigil.store.etcd_version import warn_of_lease_bug
from vigil.store.events import EventLog
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.raft_leader import RaftLeaderApart
from vigil.store.registry import Registry
from vigil.tasks import best_effort, cancel_and_wait

log = logging.getLogger(__name__)


def next_incarnation(data_dir: Path) -> int:
    """Strictly greater than any earlier incarnation of this node (persisted)."""
    path = data_dir / "incarnation"
    try:
        previous = int(path.read_text().strip())
    except (OSError, ValueError):
        previous = 0
    value = max(previous + 1, time.time_ns() // 1000)
    path.write_text(str(value))
    return value


class Agent:
    def __init__(self, cfg: NodeConfig, store: Store | None = None, clock: Clock | None = None,
                 network: Any = None, serve_api: bool = True, tick: float = TICK):
        """The ports: `store` (etcd from the config by default), `clock` (the system's),
        `network` (heartbeat datagrams: UDP by default, or an in-memory network,
        vigil.testing.memory_network), `serve_api` (off in simulations, which
        read the agent's state directly) and `tick`, the longest the detectors go
        unevaluated (vigil.core.peers.TICK; they are evaluated at each peer's
        deadline in any case; a simulation with slow heartbeats may look less often).

        The parts are built in dependency order: each is given only parts built
        before it, and hooks on a part built later are added once both exist
        (`_subscribe`). The agent's own handlers (`member_record`, `_on_*`,
        `_heartbeat_status`, `_takes_jobs`) read its parts when called, which is
        only once `run` has started them."""
        self.cfg, self.clock = cfg, clock or SystemClock()
        self.serve_api = serve_api
        self.keys = Keys(cfg.cluster)
        self.store = store or cfg.etcd.store(cfg.timing.etcd_timeout)
        self.data_dir = Path(cfg.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.incarnation = next_incarnation(self.data_dir)
        self.started_at = self.clock.wall()
        self.history = LeadershipHistory(self.data_dir / "leadership.jsonl", cfg.node)
        self.events = EventLog(self.store, self.keys, cfg.node, self.clock)
        self.registry = Registry(self.store, self.keys)
        self.wake = asyncio.Event()  # the decision loop's
        self._members_told: Any = None  # the snapshot _on_snapshot last told the heartbeats about
        self.snapshot: Any = None  # the last snapshot a cycle read (vigil.store.snapshot; for /metrics)
        # A simulation's network has no threads to run: heartbeats stay on its loop.
        self.pacer = Pacer(self.clock.now, cfg.realtime) if cfg.realtime and network is None else None
        self.heartbeats = HeartbeatService(cfg, self.clock, self.incarnation, self._on_peer_transitions,
                                           self._heartbeat_status, self.wake.set, network, tick,
                                           self.events.record, self.pacer)
        self.health = HealthMonitor(cfg.health, self.clock, self.events.record, self._on_health,
                                    restart_server=self._restart_server,
                                    gate=DrainGate(cfg.node, cfg.health.drain_budget, cfg.domains()))
        self._build_role()
        self._build_registration()
        self._build_leader_work()
        self._build_front_door()
        self._build_workload()
        self.reconciler = Reconciler(cfg, self.clock, self.store, self.keys, self.registry, self.events.record,
                                     self.leadership, self.heartbeats.peers, self.registration, self.soundness,
                                     self.wake, self.fencer, lambda: self.health.verdict, self._on_snapshot,
                                     lambda: self.heartbeats.topology)
        self._subscribe()
        self._tasks: list[asyncio.Task] = []
        self._vital: list[asyncio.Task] = []

    def _build_role(self) -> None:
        """The leader role and what it holds: the watchdog, the VIPs, the fencing-token file."""
        cfg, record = self.cfg, self.events.record
        w = cfg.watchdog
        self.watchdog = Watchdog(w.mode, LinuxWatchdogDevice(w.device), w.timeout, record)
        self.soundness = Soundness(self.watchdog.health_reasons)  # the reconciler reports its failures here
        self.vips = VipHolder(cfg.vips, self.clock.now, record)
        self.leadership = Leadership(cfg.node, cfg.timing.demote_after, self.clock, self.data_dir, self.history,
                                     self.watchdog, self.vips, record)
        if self.pacer:
            self.pacer.guard(self.leadership.deadline, self.leadership.expire_on_thread)

    def _build_registration(self) -> None:
        """This node in etcd: its session, member record and election (agent/registration.py)."""
        cfg, lead = self.cfg, self.leadership
        self.registration = Registration(cfg.node, self.store, self.clock, cfg.timing, self.registry,
                                         self.keys.leader, self.events.record, self.member_record,
                                         self.heartbeats.voted_suspects, lead.renewed, lead.lose, self.wake.set)
        self.vips.renew_now = self.registration.renew_now  # a new holder's VIPs want a fresh deadline

    def _build_leader_work(self) -> None:
        """The leader's singleton work, and the fencing of a lost leader."""
        cfg, record = self.cfg, self.events.record
        c = cfg.controller
        self.controller = (Controller(cfg.node, lambda: self.cfg.keys.signing, self.clock, record,
                                      self.leadership, c["gateway"], c["register"], c["interval"],
                                      self.data_dir / "actuator-acks.jsonl") if c else None)
        self.fencer = (Fencer(cfg.node, cfg.fencing.topology, self.clock, record, self.registry, self.store,
                              self.leadership, cfg.fencing.keep_sessions) if cfg.fencing else None)

    def _build_front_door(self) -> None:
        """The node's router, and the hold on its clients' connections across a handover."""
        cfg, record = self.cfg, self.events.record
        # The node's front door runs beside the agent, not in it: its proxy load must never
        # delay a heartbeat or a self-demotion check, and its crash must not end leadership.
        router = self.router = (ChildProcess("router", "router", [sys.executable, "-m", "vigil", "router",
                                                                  "--config", cfg.router_config],
                                             self.data_dir, self.clock, record,
                                             ignore=(signal.SIGHUP, signal.SIGUSR1))
                                if cfg.router_config else None)
        self.release = FrontDoorRelease([v.address for v in cfg.vips], lambda: router.pid if router else None,
                                        self.leadership.is_leader, record)

    def _build_workload(self) -> None:
        """The model server, its long-running work in etcd and the batch jobs it runs."""
        cfg, record, registration = self.cfg, self.events.record, self.registration
        self.payloads = PayloadPublisher(self.store, self.keys, cfg.node, self.clock,
                                         lambda: registration.lease() or 0)
        self.inference = (InferenceSupervisor(cfg.inference, self.data_dir, self.clock, self._on_inference,
                                              record, self.payloads.report) if cfg.inference else None)
        self.jobs = (JobRunner(self.store, self.keys, cfg.node, cfg.inference.url, self.clock, self.payloads.lease,
                               self._takes_jobs, record, cfg.domains())
                     if cfg.inference and cfg.inference.batch_jobs else None)

    def _subscribe(self) -> None:
        """Hooks between parts, added once both ends exist."""
        heartbeats, reconciler, release = self.heartbeats, self.reconciler, self.release
        self.leadership.on_change += [self._lead_heartbeats, lambda change: heartbeats.send_now(),
                                      lambda change: self.wake.set(),
                                      lambda change: reconciler.invalidate_snapshot(),
                                      lambda change: change.kind == "acquired" and release.lift_soon()]
        if self.controller:  # acquired: write with the new token; ended: stop writing
            self.leadership.on_change.append(self.controller.on_change)
        reconciler.before_resign, reconciler.after_resign = release.quiesce, release.after_resign
        if self.jobs:  # an orphaned shard is claimed on its owner's conviction or record's deletion
            self.jobs.follow(reconciler)
        self.health.claim_places(DrainPlaces(self.store, self.keys, self.cfg.node), self.registration.lease)

    def __repr__(self) -> str:
        return f"<Agent {self.cfg.node} {self.role!r} {self.registration.session!r}>"

    @property
    def role(self) -> LeaderRole:
        """The leader role, to read (tests, /status); change it through `leadership`."""
        return self.leadership.role

    # -- state visible to the API and heartbeats ------------------------------
    @property
    def health_reasons(self) -> tuple[str, ...]:
        """Why this node may not lead (empty: it may)."""
        return self.soundness.reasons()

    @property
    def healthy(self) -> bool:
        """May this node lead: the agent itself is sound and the node's verdict is ready."""
        return not self.health_reasons and self.health.verdict.may_lead

    def is_leader(self) -> bool:
        return self.leadership.is_leader()

    def session_ok(self) -> bool:
        return self.registration.session_ok()

    def state(self) -> AgentState:
        """What /status and /metrics show, read now from what the parts describe (vigil.agent.status)."""
        cfg, now, snap, verdict, ev = self.cfg, self.clock.now(), self.snapshot, self.health.verdict, self.events
        return AgentState(
            now=now, node=cfg.node, cluster=cfg.cluster, incarnation=self.incarnation, leader=self.is_leader(),
            token=self.role.token, leader_valid_for=self.role.remaining(now), healthy=self.healthy,
            reasons=self.health_reasons, verdict=verdict.state, drain_deferred=verdict.deferred,
            session=self.registration.state(), decision=str(self.reconciler.last), cycles=self.reconciler.cycles,
            inference=self.inference.describe() if self.inference else None, watchdog=self.watchdog.describe(),
            vips=self.vips.describe() if cfg.vips else None, heartbeat=self.heartbeats.state(),
            signing_key=cfg.keys.signing.send if cfg.keys.signing else None,
            events={"written": ev.written, "pending": ev.pending, "dropped": ev.dropped},
            decided=snap.states.get(cfg.node) if snap else None,
            fence_blocked=tuple(snap.fence_blocked) if snap else (), certificates=certificates(cfg))

    def _takes_jobs(self) -> bool:
        """Batch work goes where requests would: a ready engine on a node in service."""
        snap = self.reconciler.snapshot
        state = snap.states.get(self.cfg.node) if snap else None
        return self.inference.ready and self.health.verdict.serves and state in (None, "active", "standby")

    def member_record(self) -> MemberRecord:
        return MemberRecord(
            self.cfg.node, self.cfg.api_url, self.cfg.priority, tuple(self.cfg.addresses), self.cfg.heartbeat_port,
            self._health_record(), self.health.fingerprint,
            self.inference.describe() if self.inference else None,
            self.router.describe() if self.router else None,
            ({n: [d["type"] for d in levels] for n, levels in self.cfg.fencing.topology.items()}
             if self.cfg.fencing else {}),
            tuple(self.heartbeats.voted_suspects()), self.incarnation, self.started_at, __version__, os.getpid(),
            self.cfg.keys.signing.send if self.cfg.keys.signing else 0)

    def _health_record(self) -> dict[str, Any]:
        """The verdict others act on: a node whose agent may not lead (no watchdog, a
        failing decision loop) is at least degraded, whatever its probes say."""
        h = self.health.describe()
        if self.health_reasons:
            h["verdict"] = more_severe(h["verdict"], DEGRADED)
            h["reasons"] = list(self.health_reasons) + h["reasons"]
        return {**h, "may_lead": self.healthy}

    def _on_snapshot(self, snap: Any) -> None:
        """Every snapshot a cycle reads: the incarnations the heartbeat receiver
        should expect, the leader the detection topology follows and the member
        records the drain budget reads (the incarnations and key ids are skipped
        for the snapshot of the last cycle: a cycle that reads no change gets the
        same object)."""
        if snap is not self._members_told:
            self._members_told = snap
            self.heartbeats.expect({n: rec.incarnation for n, rec in snap.members.items()})
            self.heartbeats.peer_key_ids({n: rec.heartbeat_key_id for n, rec in snap.members.items()})
        self.snapshot = snap
        self.health.see_members(snap.members)  # every cycle: a drain that waits settles with time too
        self.heartbeats.follow(snap.leader.name if snap.leader else None)

    def _lead_heartbeats(self, change: Any) -> None:
        """On taking the role, send to everyone at once, not from the next snapshot on."""
        if self.leadership.is_leader():
            self.heartbeats.follow(self.cfg.node)

    def _heartbeat_status(self) -> tuple[str, str]:
        return ("healthy" if self.healthy else "unhealthy",
                "leader" if self.is_leader() else "standby")

    def reload(self, path: str) -> bool:
        """SIGHUP: take the keys, peers and observers from `path` (vigil.agent.reload)."""
        self._members_told = None  # a peer added now is told its member's incarnation at the next cycle
        return reload_config(self, path)

    # -- lifecycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event, api_ready: asyncio.Event | None = None) -> None:
        api = AgentApi(self.cfg, self.leadership, lambda: self.health_reasons, self.session_ok, self.inference,
                       lambda: status_document(self.state()), lambda: metrics_text(self.state()),
                       lambda: self.health.verdict, ClusterPage(self).document)
        if self.serve_api:
            await api.start()
        await self.heartbeats.start()
        self.events.start()
        await self.health.start()
        if self.inference:
            await self.inference.start()
        if self.router:
            self.router.start()
        self.release.lift_soon()  # a hold an earlier agent left mid-handover (agent/release.py)
        self.events.record("agent_started", f"agent started (incarnation {self.incarnation})",
                           pid=os.getpid(), version=__version__)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.registration.run()),
                       loop.create_task(self.reconciler.watch_loop()),
                       loop.create_task(self.reconciler.loop()),
                       loop.create_task(self.leadership.guard()),
                       loop.create_task(warn_of_lease_bug(self.store, self.events.record)),
                       *([loop.create_task(self.payloads.run())] if self.inference else []),
                       *([loop.create_task(self.jobs.run())] if self.jobs else [])]
        local = self.cfg.etcd.local_member
        if local and isinstance(self.store, EtcdStore):
            apart = RaftLeaderApart(self.store, local)
            self.leadership.on_change.append(lambda change: apart.wake.set())
            self._tasks.append(loop.create_task(apart.run(self.is_leader, self.events.record)))
        # The registration, the decision loop and the role guard: if one of them ends,
        # systemd's watchdog stops being fed and restarts the agent.
        self._vital = [self._tasks[0], *self._tasks[2:4]]
        notifier = Notifier()
        if notifier.enabled:
            self._tasks.append(loop.create_task(notify_loop(self, notifier)))
        if api_ready:
            api_ready.set()
        try:
            await stop.wait()
        finally:
            await self._shutdown(api)

    def alive(self) -> bool:
        """The registration, the decision loop and the role guard run (systemd's
        watchdog is fed only then)."""
        return (bool(self._vital) and not any(t.done() for t in self._vital)
                and not self.reconciler.stalled(self.clock.now()))

    async def _shutdown(self, api: Any) -> None:
        Notifier().send(STOPPING=1)
        if self.is_leader():  # a planned handover: no client connection may break (agent/release.py)
            await best_effort("quiesce the front door", self.release.quiesce())
        await cancel_and_wait(*self._tasks)
        token = self.leadership.resign("graceful stop")
        if token:
            await best_effort("delete the leader key", asyncio.wait_for(
                self.registration.election.resign(token), self.cfg.timing.etcd_timeout * 2))
        await self.vips.stop()
        await best_effort("lift the connection hold", self.release.lift())
        self.events.record("agent_stopped", "graceful stop")
        await self.events.stop()
        await best_effort("flush the event log", self.events.flush())
        await best_effort("revoke the lease", self.registration.close())
        if self.controller:
            await self.controller.stop()
        if self.fencer:
            await best_effort("close the BMC sessions", self.fencer.stop())
        self.watchdog.disarm()  # a clean stop must never reset the machine
        if self.router:
            await best_effort("stop the router", self.router.stop())
        if self.inference:
            await best_effort("stop the inference server", self.inference.stop())
        await best_effort("stop the health probes", self.health.stop())
        await best_effort("stop heartbeats", self.heartbeats.stop())
        await best_effort("sync the leadership history", asyncio.to_thread(self.history.flush))
        await best_effort("stop the API", api.stop())
        await best_effort("close the store", self.store.close())

    # -- callbacks ---------------------------------------------------------------
    def _on_inference(self, ready: bool, cause: str) -> None:
        self.events.record("inference_ready" if ready else "inference_not_ready", cause)
        self.registration.request_publish()

    def _on_health(self) -> None:
        self.registration.request_publish()
        self.wake.set()

    async def _restart_server(self, why: str) -> None:
        """An application XID: restart the inference server (its supervisor starts it again)."""
        proc = self.inference.proc if self.inference else None
        if proc is not None and proc.returncode is None:
            self.events.record("inference_restart", f"restarting the inference server: {why}")
            proc.terminate()

    def _on_peer_transitions(self, changes: list[PeerTransition]) -> None:
        for c in changes:
            kind = "peer_suspected" if c.new == "suspect" else "peer_alive"
            self.events.record(kind, f"{c.peer}: {c.cause}", peer=c.peer, phi=round(c.phi, 2),
                               silent_ms=round(c.silent_for * 1000, 1),
                               detected_at=self.clock.to_wall(c.at))
        if any(c.new == "alive" for c in changes):
            self.vips.reannounce()  # a peer is back (a partition healed): re-map ARP caches
        # Peers read our suspicions before they fence anyone (core.reconcile): in our
        # heartbeats at once, and in our member record once etcd has it.
        self.heartbeats.send_now()
        if self.registration.suspects_unpublished():
            self.registration.request_publish()
        self.wake.set()
