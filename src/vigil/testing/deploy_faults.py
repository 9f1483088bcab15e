"""The faults of the deployment walkthrough (vigil.testing.deploy), each on the
running cluster under load, each returning what it measured: `t0`/`t1` (Unix
times bounding the fault, for counting the requests that failed in it) and
seconds from the fault to each state it waited for."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from vigil.testing.deploy import (CLUSTER_DIR, TARGET, Cluster, give_bundle, init_cluster, install, inventory,
                                  ready)
from vigil.testing.machines import Machine, MachineError, wait_for


def _standby_back(c: Cluster, m: Machine, timeout: float = 90) -> None:
    wait_for(lambda: ready(c, m) and c.status(m)["role"] != "leader", timeout, f"{m.name} back as a standby")


def _takeover(c: Cluster, old: str, token: int, t0: float) -> dict[str, Any]:
    """Wait for another machine to hold the VIP and another node to lead; seconds from t0."""
    others = [m for m in c.up() if m.name != old]
    holder = wait_for(lambda: [h for h in c.holders() if h != old], 30, "the VIP on another machine")
    vip_s = time.time() - t0
    new = wait_for(lambda: (lead := c.leader(others)) and lead[1] > token and lead, 30, "a new leader")
    return {"old": old, "new": new[0], "vip_holder": holder[0], "vip_s": round(vip_s, 3),
            "leader_s": round(time.time() - t0, 3), "token": new[1]}


def machine_down(c: Cluster, how: str) -> dict[str, Any]:
    """The leader's machine goes: `poweroff` (systemd's) or `crash` (SIGKILL of its init).
    Then it boots again and its agent comes back as a standby."""
    old, token = c.leader()
    m = c.nodes[old]
    t0 = time.time()
    m.poweroff(wait=False) if how == "poweroff" else m.crash()
    out = _takeover(c, old, token, t0)
    out["t0"] = t0
    if how == "poweroff":
        m.poweroff(wait=True)
    out["t1"] = time.time()
    t_boot = time.monotonic()
    c.machines.boot(m.name, m.index)
    _standby_back(c, m)
    out["rejoin_s"] = round(time.monotonic() - t_boot, 2)
    return out


def watchdog_kill(c: Cluster) -> dict[str, Any]:
    """SIGSTOP a standby's agent: systemd's watchdog aborts and kills it and the
    unit restarts it; it comes back as a standby."""
    lead = c.leader()[0]
    m = next(x for x in c.up() if x.name != lead)
    pid = m.pid_of("vigil-agent")
    t0 = time.time()
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _restarted(m, pid), 60, "a new vigil-agent process")
    restarted_s = time.time() - t0
    _standby_back(c, m)
    journal = m.journal("vigil-agent", 400)
    return {"node": m.name, "t0": t0, "t1": time.time(), "restarted_s": round(restarted_s, 2),
            "watchdog_in_journal": "Watchdog timeout" in journal, "leader_kept": c.leader()[0] == lead}


def _restarted(m: Machine, old_pid: int) -> bool:
    """The unit runs a process other than `old_pid`. Between systemd's kill and the
    restart the main PID it names may already be gone: not yet, not an error."""
    if not _active(m):
        return False
    try:
        return m.pid_of("vigil-agent") != old_pid
    except MachineError:
        return False


def _active(m: Machine) -> bool:
    return m.run(["systemctl", "is-active", "vigil-agent"], check=False).stdout.strip() == "active"


def stop_leader(c: Cluster) -> dict[str, Any]:
    """`systemctl stop vigil-agent` on the leader: a handover; then it starts again."""
    old, token = c.leader()
    m = c.nodes[old]
    t0 = time.time()
    m.run(["systemctl", "stop", "vigil-agent"], timeout=90)
    out = _takeover(c, old, token, t0)
    out.update(t0=t0, t1=time.time())
    m.run(["systemctl", "start", "vigil-agent"], timeout=120)
    _standby_back(c, m)
    return out


def rolling_upgrade(c: Cluster, deb: Path, version: str) -> dict[str, Any]:
    """One machine at a time, the leader last: drain, install the new package, resume."""
    t0 = time.time()
    lead = c.leader()[0]
    order = [m for m in c.up() if m.name != lead] + [c.nodes[lead]]
    per: dict[str, float] = {}
    for m in order:
        t = time.monotonic()
        _operator(c, "drain", m.name, "--wait", "--timeout", "120")
        install(m, deb)
        # As an operator would: back in service only once its model server answers again.
        wait_for(lambda m=m: (s := c.status(m)) and s.get("version") == version and s["session"]["ok"]
                 and (s.get("inference") or {}).get("ready"), 120, f"{m.name}'s agent running {version}, its "
                 "model server ready")
        _operator(c, "resume", m.name)
        _standby_back(c, m) if m.name != lead else wait_for(lambda m=m: ready(c, m), 60, f"{m.name} ready")
        per[m.name] = round(time.monotonic() - t, 2)
    versions = {m.name: (c.status(m) or {}).get("version") for m in c.up()}
    return {"t0": t0, "t1": time.time(), "per_machine_s": per, "versions": versions}


def _operator(c: Cluster, *args: str) -> str:
    return c.admin.run(["vigil", args[0], "--target", TARGET, *args[1:]], timeout=180).stdout


def add_node(c: Cluster, name: str, index: int, deb: Path, served_by: Callable[[str], bool]) -> dict[str, Any]:
    """A fourth machine joins the running cluster: its bundle from `vigil init
    --add-node`, the others reloaded (no restart), then it serves requests."""
    t0 = time.time()
    m = c.machines.boot(name, index)
    c.nodes[name] = m
    install(m, deb)
    names = sorted(c.nodes, key=lambda n: int(n[1:]))
    init_cluster(c, names, "--add-node", name)
    c.admin.run(["vigil", "etcd-auth", "apply", "--users", f"{CLUSTER_DIR}/admin/etcd-users.yaml"])
    pids = {x.name: x.pid_of("vigil-agent") for x in c.up() if x is not m}
    for x in c.up():
        give_bundle(c, x)
    m.run(["systemctl", "enable", "--now", "vigil-agent"], timeout=120)
    wait_for(lambda: ready(c, m), 90, f"{name} ready")
    lead = c.leader()
    wait_for(lambda: (s := c.status(c.nodes[lead[0]])) and s["peers"].get(name, {}).get("state") == "alive",
             60, f"the leader hearing {name}")
    try:
        wait_for(lambda: served_by(name), 60, f"requests answered by {name}")
    except MachineError as e:
        holder = c.nodes[c.holders()[0]]
        raise MachineError(f"{e}; {name}: {c.status(m)}; the VIP holder {holder.name}'s router:\n"
                           + holder.run(["tail", "-30", "/var/lib/vigil/router.log"], check=False).stdout) from None
    return {"t0": t0, "t1": time.time(), "join_s": round(time.time() - t0, 2),
            "restarted": [x for x, pid in pids.items() if c.nodes[x].pid_of("vigil-agent") != pid],
            "inventory": yaml.safe_dump(inventory(names))}
