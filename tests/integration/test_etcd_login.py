"""etcd checks a password with bcrypt before it hands out a token: ~60 ms on an
idle host, seconds on a loaded one. Each request used to authenticate within
its own slice (0.25 s of a 0.5 s request), so on a loaded host every attempt
was abandoned while etcd went on checking it, no client ever got a token, and
the secure lab elected no leader (seen at load 12 on 2 cores). Now one
authentication per store runs to its own deadline and every request waits on
it. The etcd here is an HTTP server that answers as etcd's gateway does, with
an authentication that takes 1.5 s."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from vigil.errors import StoreUnavailable
from vigil.procs import free_ports
from vigil.store.etcd import EtcdStore

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
