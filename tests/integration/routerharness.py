"""One harness for in-process router tests: a router on the in-memory store
(held to etcd by the conformance suite) in front of real HTTP backends, each
a key-ring member that heartbeats to the router as its agent would. The
router routes only to members it has heard (vigil.router.membership), so a
backend that never heartbeats gets no traffic here either; tests of
`membership: etcd_only` say so in their config."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from vigil.procs import free_ports
from vigil.router.config import parse_router_config
from vigil.router.proxy import Router
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

CLUSTER = "d"


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # a frozen handler ends with the test
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@dataclass
class Front:
    router: Router
    url: str
    store: MemoryStore
    beats: HeartbeatSender  # stop_node(name) silences a backend's heartbeats


@contextlib.asynccontextmanager
async def router_front(servers: dict[str, web.Application], /, cluster: str = CLUSTER,
                       ring: tuple[str, ...] = (), before: dict[str, str] | None = None,
                       keys: dict[str, dict[str, Any]] | None = None, **cfg: Any) -> AsyncIterator[Front]:
    """A router (config overrides in `cfg`) in front of the given servers (by node name),
    each a heartbeating key-ring member; yields once every one is eligible.
    `ring`: more key-ring members, silent until `beats.start_node(name)`;
    `before`: raw etcd keys and values (under the cluster's prefix) put
    before the router starts; `keys`: vigil.testing.keys.heartbeat_keys' output
    for every name, instead of shared ones."""
    names = list(servers)
    keys = keys or shared_keys(*names, *ring)
    ports = free_ports(len(servers) + 2)
    runners = [await serve(app, port) for app, port in zip(servers.values(), ports)]
    store = MemoryStore()
    store.start()
    for name, port in zip(names, ports):
        await store.put(Keys(cluster).member(name), json.dumps(member_record(f"http://127.0.0.1:{port}")))
    for key, value in (before or {}).items():
        await store.put(Keys(cluster).prefix + key, value)
    router_port, hb_port = ports[-2:]
    config = {"cluster": cluster, "etcd": {"endpoints": ["http://127.0.0.1:1"]},
              "listen": {"port": router_port}, "heartbeat": {"port": hb_port, **keys["ring"]}, **cfg}
    router = Router(parse_router_config(config), store)
    await router.start()
    await router.listen("127.0.0.1", router_port)
    beats = HeartbeatSender(cluster, keys, [*names, *ring], ("127.0.0.1", hb_port)).start()
    for name in ring:
        beats.stop_node(name)
    try:
        await wait_until(lambda: all(b.why_not(0.0) is None for b in
                                     (router.table.backends.get(n) for n in names) if b) and
                         set(names) <= set(router.table.backends), 10, "every backend to be learnt and heard")
        yield Front(router, f"http://127.0.0.1:{router_port}", store, beats)
    finally:
        await beats.stop()
        await router.stop()
        for r in runners:
            await r.cleanup()
        await store.close()


@contextlib.asynccontextmanager
async def router_over(servers: dict[str, web.Application], /,
                      **cfg: Any) -> AsyncIterator[tuple[Router, str]]:
    """`router_front`, yielding (router, its URL)."""
    async with router_front(servers, **cfg) as f:
        yield f.router, f.url
