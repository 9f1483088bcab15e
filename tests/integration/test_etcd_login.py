"""etcd checks a password with bcrypt before it hands out a token: ~60 ms on an
idle host, seconds on a loaded one. Each request used to authenticate within
its own slice (0.25 s of a 0.5 s request), so on a loaded host every attempt
was abandoned while etcd went on checking it, no client ever got a token, and
the secure lab elected no leader (seen at load 12 on 2 cores). Now one
authentication per store runs to its own deadline and every request waits on
it. The etcd here is an HTTP server that answers as etcd's gateway does, with
an authentication that takes 1.5 s.

That one login was tied to the endpoint it started on: while a frozen member
(SIGSTOPped, blackholed: it accepts and never answers) held it for its 10 s,
every request waited on it, even after failing over to a healthy member, so
an agent that needed a token could not reach etcd for longer than its lease
TTL. Now each endpoint has its own login. Those tests use a real etcd with
auth on, behind a frozen endpoint that accepts TCP and never answers."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from aiohttp import web

from vigil.errors import StoreUnavailable
from vigil.lab.etcd import EtcdCluster
from vigil.procs import free_ports
from vigil.store.etcd import AUTH_TIMEOUT, EtcdStore
from vigil.store.etcd_auth import enable_auth
from vigil.store.keys import Keys

SLOW_AUTH = 1.5


async def slow_etcd():
    calls = {"authenticate": 0, "range": 0}

    async def authenticate(request: web.Request) -> web.Response:
        calls["authenticate"] += 1
        await asyncio.sleep(SLOW_AUTH)  # stands for bcrypt on a busy host (server side: not test sync)
        return web.json_response({"header": {"revision": "1"}, "token": "tok.1"})

    async def range_(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "tok.1"
        calls["range"] += 1
        return web.json_response({"header": {"revision": "7"}, "kvs": []})

    app = web.Application()
    app.add_routes([web.post("/v3/auth/authenticate", authenticate), web.post("/v3/kv/range", range_)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", calls


async def test_a_slow_authentication_is_waited_for_once_not_abandoned_by_every_request():
    runner, url, calls = await slow_etcd()
    store = EtcdStore([url], 0.5, user="n1", password="pw")
    try:
        with pytest.raises(StoreUnavailable):  # shorter than one authentication: this one times out
            await store.range("/vigil/c/")
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # each request is 0.5 s; the login it started goes on
            try:
                kvs, rev = await store.range("/vigil/c/")
                break
            except StoreUnavailable:
                assert asyncio.get_running_loop().time() < deadline, calls
        assert (kvs, rev) == ([], 7)
        assert calls["authenticate"] == 1, "one authentication, not one per attempt"
    finally:
        await store.close()
        await runner.cleanup()


KEYS = Keys("login")
PASSWORD = "pw-n1"
CALLS = 4
BOUND = AUTH_TIMEOUT / 2  # s for all CALLS: ~0.4 s with a login per endpoint, >= 10 s waiting on the frozen one


@pytest.fixture(scope="module")
def etcd():
    """One real etcd member with auth on and agent user n1."""
    root = Path(tempfile.mkdtemp(prefix="vigil-etcd-login-"))
    cluster = EtcdCluster.plan(root, 1)
    cluster.start()
    try:
        cluster.wait_healthy(30)

        async def enable() -> None:
            store = EtcdStore(cluster.endpoints, 5.0)
            try:
                await enable_auth(store, "login", {"n1": ("agent", PASSWORD)}, "pw-root")
            finally:
                await store.close()
        asyncio.run(enable())
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def frozen_endpoint():
    """A member that accepts connections and never answers (SIGSTOPped or blackholed)."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, release, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def timed_ranges(store: EtcdStore) -> float:
    """Seconds for CALLS reads, each of which must succeed."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(CALLS):
        kvs, rev = await store.range(KEYS.prefix)
        assert kvs == [] and rev > 0
    return loop.time() - start


async def test_a_login_stuck_on_a_frozen_member_does_not_hold_requests_that_fail_over(etcd):
    server, release, frozen = await frozen_endpoint()
    store = EtcdStore([frozen, etcd.endpoints[0]], 1.0, user="n1", password=PASSWORD)
    try:
        took = await timed_ranges(store)  # the first logs in on the frozen member, gives up, fails over
        assert took < BOUND, f"{CALLS} requests took {took:.2f} s"
    finally:
        await store.close()
        release.set()
        server.close()


async def test_a_new_login_after_invalid_auth_token_fails_over_past_a_frozen_member(etcd):
    server, release, frozen = await frozen_endpoint()
    store = EtcdStore([etcd.endpoints[0], frozen], 1.0, user="n1", password=PASSWORD)
    root = EtcdStore(etcd.endpoints, 5.0, user="root", password="pw-root")
    try:
        await store.range(KEYS.prefix)
        old = store._token
        await root.call("auth/disable", {})  # etcd forgets every token: "invalid auth token"
        await root.close()
        root = EtcdStore(etcd.endpoints, 5.0)
        await root.call("auth/enable", {})
        took = await timed_ranges(store)  # the first logs in again on the frozen member, gives up, fails over
        assert store._token not in (None, old), "the store logged in again"
        assert took < BOUND, f"{CALLS} requests took {took:.2f} s"
    finally:
        await store.close()
        await root.close()
        release.set()
        server.close()
