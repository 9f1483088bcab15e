"""Fault schedules for the chaos harness: the named ones of issue #4 and
random ones drawn from a seed, run one after another on one lab in network
namespaces (vigil.chaos.run).

A schedule is a list of steps; a step is one fault (kill, pause, isolate,
split, loss, etcd member faults, a switchover with the etcd leader killed)
held for a while, then healed. After each heal the step waits (bounded) for a
live leader, then restores the lab (powers dead nodes on through their BMCs,
restarts dead etcd members) and waits until the whole cluster is ready, so
every step starts from a healthy cluster. What each step saw is returned as
plain data; the checker (vigil.chaos.checker) judges the whole run.

Lab timers: lease TTL 2 s, so "2 x TTL" is 4 s.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vigil import procs
from vigil.errors import VigilError
from vigil.lab.cluster import LAB_TIMING, Lab
from vigil.lab.netns import NetTopology
from vigil.store.keys import Keys

TTL = float(LAB_TIMING["lease_ttl"])
RECOVERY_WAIT = 30.0  # the checker's bound is tighter; this only stops a hung run
RESTORE_WAIT = 90.0
# After a restore the cluster must stay whole this long before the next fault: a schedule
# starts from a steady state, not from the heal's last lease grants and elections (a leader
# elected 0.1 s before the next fault leads on a keep-alive sent before its election).
SETTLE = 2.0
POLL = 0.05


@dataclass
class Step:
    fault: str
    target: str = "leader"  # leader | standby | any
    hold: float = 0.0       # seconds the fault lasts before it is healed
    percent: int = 0        # packet loss

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v}


NAMED: dict[str, list[Step]] = {
    "leader_killed": [Step("kill")],
    "leader_partitioned": [Step("isolate", "leader", 3 * TTL)],
    "leader_paused": [Step("pause", "leader", 2 * TTL)],
    "etcd_leader_killed_in_switchover": [Step("switchover_etcd_kill", "standby", 2.0)],
    "split_all": [Step("split_all", "any", 3 * TTL)],
    "standby_partitioned": [Step("isolate", "standby", 3 * TTL)],
    "leader_loss": [Step("loss", "leader", 10.0, 20)],
}


def random_schedule(rng: random.Random) -> list[Step]:
    """One to three faults; kinds, targets, durations and loss from `rng`."""
    steps = []
    for _ in range(rng.randint(1, 3)):
        fault = rng.choice(["kill", "pause", "isolate", "split_all", "loss", "etcd_kill",
                            "etcd_pause", "switchover_etcd_kill"])
        if fault == "split_all":
            target = "any"
        elif fault == "switchover_etcd_kill":
            target = "standby"  # the node to switch over to
        else:
            target = rng.choice(["leader", "leader", "standby"])
        hold = 0.0 if fault == "kill" else round(rng.uniform(0.5, 3.0) * TTL, 2)
        steps.append(Step(fault, target, hold, rng.choice([10, 20, 30, 40]) if fault == "loss" else 0))
    return steps


@dataclass
class Chaos:
    lab: Lab
    net: NetTopology
    rng: random.Random
    recoveries: list[float | None] = field(default_factory=list)
    broken: str = ""  # why the lab could not be restored; no step runs after that

    def run(self, name: str, steps: list[Step]) -> list[dict[str, Any]]:
        """Each step, then a restore; an error is reported in the step's result
        (and fails the run); a lab that cannot be restored ends the run."""
        out = []
        for step in steps:
            if self.broken:
                break
            try:
                res = self.step(step)
            except Exception as e:  # noqa: BLE001 - reported, and the checker fails the run
                res = {"error": f"{type(e).__name__}: {e}"}
                self.recoveries.append(None)
            try:
                self.restore()
            except Exception as e:  # noqa: BLE001
                self.broken = f"{type(e).__name__}: {e}; {self.diagnosis()}"
                res["error"] = (res.get("error", "") + " then restore failed: " + self.broken).strip()
            out.append({"schedule": name, **step.to_json(), **res})
        return out

    def step(self, step: Step) -> dict[str, Any]:
        lab = self.lab
        before = lab.wait_for(self.live_leader, RECOVERY_WAIT, "a live leader before the fault")
        node = self.pick(step.target, before[0])
        t0 = time.time()
        heal = FAULTS[step.fault](self, node, step)
        killed_leader = step.fault == "kill" and node == before[0]
        seen = self.observe(before, t0, RECOVERY_WAIT if killed_leader else step.hold, killed_leader)
        claims = [n.name for n in lab.nodes if lab.is_leader(n.name, timeout=0.3)]
        healed = time.time()
        resumed = heal()
        after = self.wait_live_leader()
        recovery = None if after is None else round(time.time() - healed, 3)
        self.recoveries.append(recovery)
        return {"node": node, "before": list(before), **seen, "claims_at_end": claims,
                **({"resumed_claims": resumed} if resumed is not None else {}),
                "recovery_s": recovery, "after": list(after) if after else None}

    # -- observation -------------------------------------------------------------
    def live_leader(self) -> tuple[str, int] | None:
        """The leader key's holder, if that node itself answers 200 on /leader."""
        cur = self.lab.leader()
        return cur if cur and self.lab.is_leader(cur[0], timeout=0.3) else None

    def wait_live_leader(self) -> tuple[str, int] | None:
        try:
            return self.lab.wait_for(self.live_leader, RECOVERY_WAIT, "a live leader")
        except VigilError:  # None is the recorded answer: no leader in time
            return None

    def observe(self, before: tuple[str, int], t0: float, hold: float,
                until_takeover: bool) -> dict[str, Any]:
        """For `hold` seconds (or until a takeover), poll apart the leader key
        for a new token and the old leader's own /leader for anything but 200,
        so that a slow answer to one does not delay seeing the other."""
        marks: dict[str, float] = {}
        done = threading.Event()

        def poll(mark: str, cond: Callable[[], Any]) -> None:
            while not done.is_set():
                if cond():
                    marks[mark] = round(time.time() - t0, 3)
                    return
                done.wait(POLL)

        new_token = lambda: (lambda cur: cur is not None and cur[1] != before[1])(self.lab.leader())
        threads = [threading.Thread(target=poll, args=a, daemon=True) for a in (
            ("takeover_s", new_token),
            ("old_stopped_claiming_s", lambda: not self.lab.is_leader(before[0], timeout=0.3)))]
        for t in threads:
            t.start()
        while time.time() < t0 + hold and not (until_takeover and "takeover_s" in marks):
            time.sleep(POLL)
        done.set()
        for t in threads:
            t.join()
        return {"takeover_s": marks.get("takeover_s"),
                "old_stopped_claiming_s": marks.get("old_stopped_claiming_s")}

    def pick(self, target: str, leader: str) -> str:
        names = [n.name for n in self.lab.nodes]
        if target == "leader":
            return leader
        return self.rng.choice([n for n in names if n != leader] if target == "standby" else names)

    def diagnosis(self) -> str:
        """What each agent says, for a lab that would not become ready."""
        lab = self.lab
        parts = [f"leader key {lab.leader()}, etcd raft leader {lab.etcd.leader()}"]
        for n in lab.nodes:
            st = lab.agent_status(n.name, timeout=1.0)
            parts.append(f"{n.name}: " + ("no answer" if st is None else
                         f"{st['role']}, decision {st['decision']!r}, session ok "
                         f"{st['session']['ok']}, peers " + ", ".join(
                             f"{p} {v['state']}" for p, v in st["peers"].items())))
        return "; ".join(parts)

    def fencing_in_flight(self, node: str) -> bool:
        marker = self.lab.read_key(Keys(self.lab.cluster).fence_marker(node))
        return bool(marker and '"in_progress"' in marker[0])

    def fence_pending(self, node: str) -> bool:
        """`node` still holds the leader key, or a fence of it is in flight."""
        return (self.lab.leader() or ("",))[0] == node or self.fencing_in_flight(node)

    # -- repair ------------------------------------------------------------------
    def restore(self) -> None:
        """Heal the network, resume and power on every node, restart every etcd
        member; wait until the whole cluster is ready. A node fenced meanwhile
        (it was suspected just before the heal) is powered on again."""
        lab = self.lab
        deadline = time.time() + RESTORE_WAIT
        while True:
            self.net.heal()
            for n in lab.nodes:
                lab.signal_agent(n.name, signal.SIGCONT)
                if not procs.owns(n.agent_pid, n.config):
                    # As an operator would: never power a node on while a fence against it
                    # may be in flight (the fence would find it on and fail, blocking its role).
                    lab.wait_for(lambda: not self.fence_pending(n.name), RECOVERY_WAIT,
                                 f"the fencing of {n.name} to finish before powering it on")
                    lab.start_agent(n.name)
            for m in lab.etcd.members:
                procs.signal_pid(m.pid, signal.SIGCONT, m.data_dir)
                if not procs.owns(m.pid, m.data_dir):
                    lab.etcd.start(m.name)
            lab.etcd.wait_healthy(RECOVERY_WAIT)
            lab.save()
            dead = lambda: [n for n in lab.nodes if not procs.owns(n.agent_pid, n.config)]  # noqa: E731
            lab.wait_for(lambda: dead() or lab.ready() or time.time() > deadline, RESTORE_WAIT,
                         "the whole cluster ready again")
            if not dead() and lab.ready() and not any(self.fencing_in_flight(n.name) for n in lab.nodes):
                whole_since, leader = time.time(), lab.leader()
                lab.wait_for(lambda: time.time() - whole_since >= SETTLE or lab.leader() != leader,
                             SETTLE + RECOVERY_WAIT, "the restored cluster to settle", poll=0.1)
                if lab.leader() == leader and lab.ready():
                    return
            if time.time() > deadline:
                raise VigilError(f"the cluster was not whole again within {RESTORE_WAIT:g} s")


# -- faults: each injects at once and returns its heal (which may report
# whether the node claimed leadership the instant it resumed) ------------------
def _kill(c: Chaos, node: str, _: Step) -> Callable[[], None]:
    c.lab.kill_agent(node)
    return lambda: None


def _pause(c: Chaos, node: str, _: Step) -> Callable[[], bool | None]:
    c.lab.signal_agent(node, signal.SIGSTOP)

    def heal() -> bool | None:
        if not c.lab.signal_agent(node, signal.SIGCONT):
            return None  # fenced (powered off) while frozen
        return bool(c.lab.is_leader(node, timeout=2.0))
    return heal


def _isolate(c: Chaos, node: str, step: Step) -> Callable[[], None]:
    i = int(node[1:])
    if step.target == "standby":
        # The standby's machine also runs an etcd member: were it raft leader, cutting it
        # off would be an etcd election as well (an etcd fault, the etcd_* steps' business),
        # and the leader, finding etcd mute for longer than its lease margin, would demote.
        netns = c.lab.node(node).netns
        for m in c.lab.etcd.members:
            if m.netns == netns:
                c.lab.etcd.move_leader_off(m.name)
    c.net.partition([i], [j for j in range(1, len(c.lab.nodes) + 1) if j != i])
    return c.net.heal


def _split_all(c: Chaos, _: str, __: Step) -> Callable[[], None]:
    n = len(c.lab.nodes)
    c.net.partition(*[[i] for i in range(1, n + 1)])
    return c.net.heal


def _loss(c: Chaos, node: str, step: Step) -> Callable[[], None]:
    c.net.loss(int(node[1:]), step.percent)
    return c.net.heal


def _etcd_member(c: Chaos, step: Step) -> str:
    """The etcd raft leader for a leader-targeted fault, else a follower."""
    lead = c.lab.wait_for(c.lab.etcd.leader, 10, "an etcd raft leader")
    if step.target == "leader":
        return lead
    return c.rng.choice([m.name for m in c.lab.etcd.members if m.name != lead])


def _etcd_kill(c: Chaos, _: str, step: Step) -> Callable[[], None]:
    c.lab.etcd.kill(_etcd_member(c, step))
    return lambda: None  # restore() restarts it once a leader is back


def _etcd_pause(c: Chaos, _: str, step: Step) -> Callable[[], None]:
    m = c.lab.etcd.member(_etcd_member(c, step))
    procs.signal_pid(m.pid, signal.SIGSTOP, m.data_dir)

    def heal() -> None:
        procs.signal_pid(m.pid, signal.SIGCONT, m.data_dir)
    return heal


def _switchover_etcd_kill(c: Chaos, node: str, _: Step) -> Callable[[], None]:
    """Ask for a switchover to `node`, and kill the etcd raft leader the moment
    the request is in etcd, while the leader is handing over."""
    lab = c.lab
    p = procs.spawn([sys.executable, "-m", "vigil", "switchover", "--to", node, "--lab", str(lab.root),
                     "--wait", "20"], lab.root / "switchover.log")
    lab.wait_for(lambda: lab.read_key(Keys(lab.cluster).switchover) or p.poll() is not None, 20,
                 "the switchover request in etcd")
    lab.etcd.kill(lab.wait_for(lab.etcd.leader, 10, "an etcd raft leader"))

    def heal() -> None:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return heal


FAULTS: dict[str, Callable[[Chaos, str, Step], Callable[[], Any]]] = {
    "kill": _kill, "pause": _pause, "isolate": _isolate, "split_all": _split_all, "loss": _loss,
    "etcd_kill": _etcd_kill, "etcd_pause": _etcd_pause, "switchover_etcd_kill": _switchover_etcd_kill,
}
