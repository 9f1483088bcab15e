"""Issue 10 #2: the agent runs its node's router (vigil.agent.child): started
in its own session with a PID file, restarted when it dies, a router left by
a SIGKILLed agent stopped before a new one starts, stopped with the agent;
and a node whose router file does not load never starts (exit 2, named)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from vigil import procs
from vigil.agent.child import ChildProcess, child_pid
from vigil.clock import SystemClock
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

SLEEPER = ["/bin/sleep", "3600"]  # stands for `vigil router --config F`: a long-running child


def child(tmp_path: Path, events: list) -> ChildProcess:
    return ChildProcess("router", "router", SLEEPER, tmp_path, SystemClock(),
                        lambda kind, cause, **kw: events.append((kind, cause)))


async def test_the_router_is_restarted_when_it_dies_and_stopped_with_the_agent(tmp_path):
    events: list = []
    c = child(tmp_path, events)
    c.start()
    try:
        first = await wait_until(lambda: c.pid, 10, "the router started")
        assert child_pid(tmp_path, "router") == first
        os.kill(first, signal.SIGKILL)
        second = await wait_until(lambda: c.pid if c.pid not in (None, first) else None, 10,
                                  "the router restarted")
        assert second != first and child_pid(tmp_path, "router") == second
        kinds = [k for k, _ in events]
        assert kinds[:3] == ["router_started", "router_exited", "router_started"], events
        assert "status -9" in events[1][1] and c.describe()["restarts"] == 1
    finally:
        await asyncio.wait_for(c.stop(), 20)
    assert not procs.alive(second) and child_pid(tmp_path, "router") is None


async def test_a_router_left_by_a_killed_agent_is_stopped_before_a_new_one_starts(tmp_path):
    orphan = subprocess.Popen(SLEEPER, start_new_session=True)
    (tmp_path / "router.pid").write_text(str(orphan.pid))
    c = child(tmp_path, [])
    c.start()
    try:
        new = await wait_until(lambda: c.pid, 10, "the new router started")
        assert new != orphan.pid and orphan.wait(10) is not None
    finally:
        await asyncio.wait_for(c.stop(), 20)


def test_a_router_file_that_does_not_load_stops_the_agent_before_it_starts(tmp_path):
    bad = tmp_path / "router.yaml"
    bad.write_text(yaml.safe_dump({"cluster": "c", "listen": {"port": 99999}}))
    node = {"cluster": "c", "node": "n1", "data_dir": str(tmp_path / "data"),
            "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "heartbeat": shared_keys("n1")["n1"],
            "router": {"config": str(bad)}}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node))
    for cmd in (["agent", "--config", str(path)], ["check-config", str(path)]):
        r = subprocess.run([sys.executable, "-m", "vigil", *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "router.config" in r.stderr and "does not load: heartbeat" in r.stderr, r.stderr
    node["router"] = {"config": str(tmp_path / "missing.yaml")}
    path.write_text(yaml.safe_dump(node))
    r = subprocess.run([sys.executable, "-m", "vigil", "check-config", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "router.config" in r.stderr, r.stderr
