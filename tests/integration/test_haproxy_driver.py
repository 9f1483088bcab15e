"""Issue 10 (part 3): a real HAProxy driven by `vigil haproxy drive`. A
SIGKILLed node's server is put in maintenance through the runtime API while
HAProxy's own checks (every 2 s, 3 failures) still call it up, and no
request through HAProxy fails; the node, restarted, is made ready again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from vigil import procs
from vigil.lab import Lab
from vigil.lab.load import LoadGenerator
from vigil.router.config import load_router_config
from vigil.router.haproxy import BACKEND, HaproxyDriver, runtime
from vigil.store.etcd import EtcdStore
from vigil.testing.wait import wait_for_value, wait_until


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab.up(tmp_path_factory.mktemp("haproxy") / "lab", 3, model=True, router=True)
    try:
        procs.stop(lab.router.pid, lab.router.config)  # the driver observes on the router's port
        yield lab
    finally:
        lab.down()


async def servers(socket: str) -> dict[str, tuple[int, int]]:
    """server -> (operational state, admin state) from `show servers state`."""
    out = {}
    for line in (await runtime(socket, f"show servers state {BACKEND}")).splitlines():
        f = line.split()
        if len(f) > 6 and f[1] == BACKEND:
            out[f[3]] = (int(f[5]), int(f[6]))
    return out


def test_a_killed_node_is_in_maint_before_haproxy_notices_and_nothing_fails(lab, tmp_path):
    socket, (port,) = str(tmp_path / "haproxy.sock"), procs.free_ports(1)
    cfg = subprocess.run([sys.executable, "-m", "vigil", "haproxy", "config", "--lab", str(lab.root),
                          "--socket", socket, "--bind", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    (tmp_path / "haproxy.cfg").write_text(cfg)
    ha = procs.spawn(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "haproxy.log")
    try:
        victim = asyncio.run(drive(lab, socket, f"http://127.0.0.1:{port}"))
    finally:
        procs.stop(ha.pid, "haproxy")
    # HAProxy's own word on it: the server went to maintenance before its checks failed.
    about = [line for line in (tmp_path / "haproxy.log").read_text().splitlines()
             if f"{BACKEND}/{victim}" in line and "DOWN" in line]
    assert about and "for maintenance" in about[0], about


async def drive(lab: Lab, socket: str, url: str) -> str:
    rcfg = load_router_config(lab.router.config)
    store = EtcdStore(lab.etcd.endpoints, 1.0)
    driver = HaproxyDriver(rcfg, store, socket)
    await driver.start()
    try:
        names = [n.name for n in lab.nodes]
        await wait_until(lambda: all(driver.applied.get(n) == "ready" for n in names), 20, "every server ready")
        load = LoadGenerator(url + "/v1/embeddings", rate=20, concurrency=16)
        loop = asyncio.get_running_loop()
        task = loop.create_task(load.run(600))
        await wait_until(lambda: len(load.samples) >= 40, 30, "steady traffic through HAProxy")
        victim = names[-1]
        t0 = time.time()
        await asyncio.to_thread(lab.kill_node, victim)

        async def in_maint() -> bool:
            return (await servers(socket)).get(victim, (0, 0))[1] & 1 == 1
        await wait_for_value(in_maint, True, 10, poll=0.01)  # "never put in maintenance" otherwise
        maint_after = time.time() - t0
        n = len(load.samples) + 60
        await wait_until(lambda: len(load.samples) >= n, 60, "3 s more of traffic")
        await asyncio.to_thread(lab.start_agent, victim)
        await wait_until(lambda: driver.applied.get(victim) == "ready", 120, f"{victim} ready again")
        load.stop()
        samples = await task
    finally:
        await driver.stop()
        await store.close()
    failed = [s for s in samples if s.status != 200]
    print(f"haproxy driven by vigil: {victim} in maint {maint_after * 1000:.0f} ms after SIGKILL; "
          f"{len(samples)} requests, {len(failed)} failed")
    assert maint_after < 1.0 and not failed, (maint_after, failed[:3])
    assert [c[2] for c in driver.changes if c[1] == victim][-2:] == ["maint", "ready"]
    return victim
