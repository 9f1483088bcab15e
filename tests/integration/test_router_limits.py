"""Issue 9 #6: one router holds bounded resources and says so when full:
connections past `limits.max_connections` get 503, requests past
`limits.max_inflight` get 429 (overload, never a failure), bodies past a
configured `limits.max_body` get 413, idle upstream connections are capped
per backend, and the router's own endpoints live only on the admin listener."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.integration.test_router_deadlines import router_over
from tests.integration.test_router_http1 import echo_backend, raw
from vigil.procs import free_ports
from vigil.testing.wait import wait_until


def slow_backend(release: asyncio.Event) -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})
    app = web.Application()
    app.add_routes([web.route("*", "/{tail:.*}", slow)])
    return app


async def test_connections_past_the_cap_are_told_503_and_the_rest_served():
    async with router_over({"n1": echo_backend()}, limits={"max_connections": 2}) as (router, url):
        host, port = url.split("//")[1].split(":")
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        await wait_until(lambda: len(router.clients) == 2, 5, "both connections accepted")
        out = await raw(url, b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503") and b"limits.max_connections" in out
        for _, w in held:
            w.close()
        await wait_until(lambda: not router.clients, 5, "the held connections to close")
        out = await raw(url, b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", until=b"200")
        assert out.startswith(b"HTTP/1.1 200"), "served again once connections closed"


async def test_requests_past_the_inflight_cap_are_shed_with_429():
    release = asyncio.Event()
    async with router_over({"n1": slow_backend(release)}, limits={"max_inflight": 3},
                           admission={"initial_limit": 64, "max_limit": 64}) as (router, url):
        async with aiohttp.ClientSession() as http:
            held = [asyncio.ensure_future(http.post(url + "/v1/embeddings", json={})) for _ in range(3)]
            await wait_until(lambda: router.active == 3, 5, "three requests in flight")
            async with http.post(url + "/v1/embeddings", json={}) as r:
                assert r.status == 429 and "Retry-After" in r.headers
                assert "limits.max_inflight" in (await r.json())["error"]["message"]
            release.set()
            for f in held:
                async with await f as r:
                    assert r.status == 200
        assert router.active == 0


async def test_body_limit_is_configurable():
    async with router_over({"n1": echo_backend()}, limits={"max_body": 2048}) as (_, url):
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/embeddings", data=b"x" * 4096) as r:
                assert r.status == 413 and "limits.max_body" in (await r.json())["error"]["message"]
            async with http.post(url + "/v1/embeddings", data=b"x" * 1024) as r:
                assert r.status == 200


async def test_idle_upstream_connections_are_capped_per_backend():
    async with router_over({"n1": echo_backend()}, limits={"upstream_idle_per_backend": 2}) as (router, url):
        async with aiohttp.ClientSession() as http:
            async def one():
                async with http.post(url + "/v1/embeddings", json={}) as r:
                    return r.status
            assert await asyncio.gather(*[one() for _ in range(12)]) == [200] * 12
        assert all(len(conns) <= 2 for conns in router.pool.idle.values())
        assert sum(len(c) for c in router.pool.idle.values()) >= 1, "keep-alive still reused"


async def test_admin_endpoints_only_on_the_admin_listener():
    async with router_over({"n1": echo_backend()}) as (router, url):
        (admin_port,) = free_ports(1)
        await router.listen_admin("127.0.0.1", admin_port)
        admin = f"http://127.0.0.1:{admin_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(admin + "/_vigil/status") as r:
                doc = await r.json()
                assert r.status == 200 and doc["limits"]["max_connections"] == 10_000
            async with http.get(admin + "/metrics") as r:
                assert r.status == 200 and "vigil_router_requests_total" in await r.text()
            async with http.get(url + "/_vigil/status") as r:
                assert r.status == 404 and "admin listener" in (await r.json())["error"]["message"]
            async with http.get(url + "/metrics") as r:  # the public /metrics is the engine's
                assert r.status == 200 and (await r.json())["path"] == "/metrics"



async def test_admin_listener_speaks_tls_and_wants_a_token(tmp_path):
    from vigil.certs import init_ca, issue

    ca = init_ca(tmp_path)
    cert, key = issue(tmp_path, "router-admin", ["127.0.0.1"])
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("prometheus: " + "ab" * 16 + "\n")
    tokens.chmod(0o600)
    admin = {"cert_file": str(cert), "key_file": str(key), "tokens_file": str(tokens)}
    async with router_over({"n1": echo_backend()}, admin=admin) as (router, _):
        (port,) = free_ports(1)
        await router.listen_admin("127.0.0.1", port)
        import ssl
        ctx = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            async with http.get(f"https://127.0.0.1:{port}/metrics") as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            async with http.get(f"https://127.0.0.1:{port}/metrics",
                                headers={"Authorization": "Bearer " + "ab" * 16}) as r:
                assert r.status == 200 and "vigil_router_requests_total" in await r.text()
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # plain http to a TLS listener gets nothing
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    await r.read()
