"""At most once across the routers of a cluster, on a real etcd (issue 22 #3):
a keyed request goes through router A, a real `vigil router` process, which is
SIGKILLed; the client's retry through router B never runs it again. B answers
a key A finished with A's answer, and one A was running with 409."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
import uuid

import aiohttp
import yaml

from tests.integration.test_idempotency_router import PATH, gated_backend, post
from tests.integration.test_router_inprocess import serve
from vigil.procs import free_ports, spawn
from vigil.router.config import parse_router_config
from vigil.router.proxy import Router
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_for_value, wait_until

KEYS = shared_keys("n1")  # n1 heartbeats to both routers: a router routes only to members it hears


def router_config(cluster: str, name: str, endpoints: list[str], port: int, admin: int, hb: int) -> dict:
    return {"cluster": cluster, "name": name, "etcd": {"endpoints": endpoints},
            "listen": {"port": port}, "admin": {"port": admin}, "heartbeat": {"port": hb, **KEYS["ring"]}}


def eligible(admin_url: str) -> bool:
    try:
        with urllib.request.urlopen(admin_url + "/_vigil/status", timeout=5) as r:
            return any(b["eligible"] for b in json.load(r)["backends"].values())
    except OSError:
        return False


async def test_a_retry_through_another_router_after_a_sigkill_runs_nothing_again(etcd_cluster, tmp_path):
    cluster = "idem" + uuid.uuid4().hex[:8]
    backend_port, a_port, a_admin, a_hb, b_port, b_hb = free_ports(6)
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    backend = await serve(gated_backend(runs, "n1", entered, gate), backend_port)
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    await store.put(Keys(cluster).member("n1"), json.dumps(member_record(f"http://127.0.0.1:{backend_port}")))
    beats = [HeartbeatSender(cluster, KEYS, ["n1"], ("127.0.0.1", hb)).start() for hb in (a_hb, b_hb)]
    config = tmp_path / "a.yaml"
    config.write_text(yaml.safe_dump(router_config(cluster, "A", etcd_cluster.endpoints, a_port, a_admin, a_hb)))
    proc = spawn([sys.executable, "-m", "vigil", "router", "--config", str(config)], tmp_path / "a.log")
    b = Router(parse_router_config(router_config(cluster, "B", etcd_cluster.endpoints, b_port, free_ports(1)[0],
                                                 b_hb)), store)
    try:
        await b.start()
        await b.listen("127.0.0.1", b_port)
        a_url, b_url = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        await wait_until(lambda: len(b.table.eligible(0.0)) == 1, 10, "router B to learn the backend")
        loop = asyncio.get_running_loop()
        try:  # the process starts, reads etcd and lists the backend
            await wait_for_value(lambda: loop.run_in_executor(None, eligible, f"http://127.0.0.1:{a_admin}"),
                                 True, 30)
        except AssertionError:
            raise AssertionError("router A never listed its backend: " + (tmp_path / "a.log").read_text())

        gate.set()  # one key A finishes...
        status, _, done = await asyncio.wait_for(post(a_url, {"amount": 1}, "order-done"), 20)
        assert status == 200 and runs == ["n1"]
        gate.clear()
        entered.clear()
        cut = asyncio.create_task(post(a_url, {"amount": 2}, "order-cut"))  # ...one it is running
        await asyncio.wait_for(entered.wait(), 20)
        proc.kill()  # SIGKILL, mid-request
        proc.wait(10)
        try:
            await asyncio.wait_for(cut, 20)
            raise AssertionError("the client of a killed router got an answer")
        except aiohttp.ClientError:
            pass

        status, headers, body = await asyncio.wait_for(post(b_url, {"amount": 1}, "order-done"), 20)
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true" and body == done
        status, headers, body = await asyncio.wait_for(post(b_url, {"amount": 2}, "order-cut"), 20)
        assert status == 409 and b"router 'A'" in body and headers["Retry-After"] == "1"
        gate.set()  # the backend finishes the run A started; nobody recorded its outcome
        status, _, _ = await asyncio.wait_for(post(b_url, {"amount": 2}, "order-cut"), 20)
        assert status == 409
        assert runs == ["n1", "n1"], "each key ran once, though two routers saw each"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for beat in beats:
            await beat.stop()
        await b.stop()
        await backend.cleanup()
        await store.delete_prefix(Keys(cluster).prefix)
        await store.delete_prefix(Keys(cluster).idempotency)
        await store.close()
