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
            # The status page holds no data (open); what its script fetches wants the token.
            async with http.get(f"https://127.0.0.1:{port}/_vigil/ui") as r:
                page = await r.text()
                assert r.status == 200 and '<script src="ui.js">' in page
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            async with http.get(f"https://127.0.0.1:{port}/_vigil/ui.js") as r:
                assert r.status == 200 and "/_vigil/status" in await r.text()
            async with http.get(f"https://127.0.0.1:{port}/_vigil/status") as r:
                assert r.status == 401
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # plain http to a TLS listener gets nothing
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    await r.read()


# -- review 7cf5bfd B7-B9: what one connection, a slow client or the admin port can hold --

def post(path: str, body: bytes) -> bytes:
    return b"POST %b HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (path.encode(), len(body), body)


async def answers(reader: asyncio.StreamReader, n: int) -> list[int]:
    """The statuses of the next `n` answers on one connection (each with a Content-Length)."""
    statuses = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        statuses.append(int(head.split(b" ")[1]))
    return statuses


async def test_a_pipelining_client_is_not_read_past_the_pipeline_depth():
    """One connection writes 300 pipelined 64 KiB POSTs (19 MiB) at a stalled backend:
    the router holds a bounded few (the review held 799, 49 MiB), stops reading, and
    answers all of them in order once the backend moves."""
    release = asyncio.Event()
    async with router_over({"n1": slow_backend(release)}, admission={"initial_limit": 64, "max_limit": 64},
                           limits={"max_pipeline": 8}) as (router, url):
        host, port = url.split("//")[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"".join(post(f"/v1/embeddings?{i}", b"x" * 65536) for i in range(300)))
        await wait_until(lambda: router.clients and next(iter(router.clients)).paused_at is not None,
                         10, "the router to stop reading the pipelining client")
        (conn,) = router.clients
        one_read = 4  # requests a single read (256 KiB at most) may complete past the depth
        assert len(conn._queue) <= 8 + one_read and router.front.held <= 1 + 8 + one_read, conn
        assert conn._queued_bytes <= (8 + one_read) * 65536
        assert writer.transport.get_write_buffer_size() > 0, "the rest waits on the client's side"
        release.set()
        assert await answers(reader, 300) == [200] * 300
        writer.close()
    assert router.front.held == 0


async def test_requests_queued_on_connections_count_toward_max_inflight():
    """12 pipelined requests hold the first 8 inflight slots: another client's request
    is refused at once (429), and so are the pipeline's last 4, in their turn."""
    release = asyncio.Event()
    async with router_over({"n1": slow_backend(release)}, admission={"initial_limit": 64, "max_limit": 64},
                           limits={"max_inflight": 8}) as (router, url):
        host, port = url.split("//")[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"".join(post("/v1/embeddings", b"{}") for _ in range(12)))
        await wait_until(lambda: router.front.held == 8 and router.active == 1, 10, "12 requests received")
        out = await raw(url, post("/v1/embeddings", b"{}"), until=b"HTTP/1.1 429")
        assert out.startswith(b"HTTP/1.1 429") and b"limits.max_inflight" in out
        release.set()
        assert await answers(reader, 12) == [200] * 8 + [429] * 4
        writer.close()


def big_backend(size: int) -> web.Application:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * size)
    app = web.Application()
    app.add_routes([web.get("/{tail:.*}", big)])
    return app


async def test_a_client_that_reads_no_answers_is_not_written_past_one_answer_and_is_closed():
    """100 pipelined GETs of 256 KiB answers (25 MiB), none read: the router writes
    no answer while the last is unread (at most one past the high-water mark is
    buffered) and closes the connection after client_idle_timeout."""
    async with router_over({"n1": big_backend(256 * 1024)}, limits={"client_idle_timeout": 1}) as (router, url):
        host, port = url.split("//")[1].split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n" * 100)
        await wait_until(lambda: router.clients and next(iter(router.clients)).stalled_at is not None,
                         10, "the router's writes to the client to back up")
        (conn,) = router.clients
        assert conn.transport.get_write_buffer_size() <= 64 * 1024 + 300 * 1024, conn
        await wait_until(lambda: not router.clients and router.front.held == 0, 10, "the connection to close")
        writer.close()


async def drip(url: str, prefix: bytes, data: bytes, every: float) -> bool:
    """Send `prefix`, then `data` one byte per `every` s (the fault itself, not a
    wait); True once the router closes the connection before all is sent."""
    host, port = url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    closed = asyncio.ensure_future(reader.read())
    writer.write(prefix)
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            done, _ = await asyncio.wait([closed], timeout=every)
            if done:
                return True
        return False
    finally:
        closed.cancel()
        writer.close()


@pytest.mark.parametrize("part", ["head", "body"])
async def test_a_client_sending_a_byte_per_interval_is_closed_and_others_served(part):
    """Review B8: the head deadline is a total from the request's first byte, and a
    body must keep a rate, so two clients dripping a byte every 0.6 s cannot hold
    both connection slots (main held them: new clients got 503)."""
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\n\r\n"
    prefix, data = (b"", head) if part == "head" else (head, b"x" * 60)
    limits = {"client_header_timeout": 1, "max_connections": 2, "client_body_rate": 100}
    async with router_over({"n1": echo_backend()}, limits=limits) as (router, url):
        slow = [drip(url, prefix, data, 0.6) for _ in range(2)]
        assert await asyncio.wait_for(asyncio.gather(*slow), 60) == [True, True]
        await wait_until(lambda: not router.clients, 10, "both slow connections to close")
        out = await raw(url, b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", until=b"200")
        assert out.startswith(b"HTTP/1.1 200")


async def test_the_admin_listener_caps_its_connections_and_sweeps_idle_ones():
    """Review B9: 200 idle connections to the admin port: past ADMIN_MAX_CONNS each is
    told 503 and closed, the held ones close after client_idle_timeout, and then an
    operator is served again; the data plane never saw them."""
    from vigil.router.proxy import ADMIN_MAX_CONNS

    async with router_over({"n1": echo_backend()}, limits={"client_idle_timeout": 1}) as (router, url):
        (admin_port,) = free_ports(1)
        await router.listen_admin("127.0.0.1", admin_port)
        conns = [await asyncio.open_connection("127.0.0.1", admin_port) for _ in range(200)]
        refused = await asyncio.gather(*[asyncio.wait_for(r.read(), 30) for r, _ in conns[ADMIN_MAX_CONNS:]])
        assert all(out.startswith(b"HTTP/1.1 503") for out in refused)
        assert len(router.admin.conns) == ADMIN_MAX_CONNS and not router.clients
        held = await asyncio.gather(*[asyncio.wait_for(r.read(), 30) for r, _ in conns[:ADMIN_MAX_CONNS]])
        assert held == [b""] * ADMIN_MAX_CONNS, "idle admin connections swept (closed without a word)"
        for _, w in conns:
            w.close()
        await wait_until(lambda: not router.admin.conns, 10, "the admin connections to go")
        out = await raw(f"http://127.0.0.1:{admin_port}", b"GET /_vigil/status HTTP/1.1\r\nHost: a\r\n"
                                                           b"Connection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")


async def test_an_answer_held_whole_is_bounded(monkeypatch):
    """An Idempotency-Key's answer is held whole (to replay it): a backend sending more
    than MAX_BUFFERED gets a 502 naming it instead of the router's memory (review B6);
    the same answer unkeyed streams through whole."""
    import vigil.router.proxy as proxy

    monkeypatch.setattr(proxy, "MAX_BUFFERED", 1 << 20)
    big = 3 << 19  # 1.5 MiB
    async with router_over({"n1": big_backend(big)}) as (_, url):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/v1/models", headers={"Idempotency-Key": "k1"}) as r:
                assert r.status == 502 and "larger than 1 MiB" in (await r.json())["error"]["message"]
            async with http.get(url + "/v1/models") as r:
                assert r.status == 200 and len(await r.read()) == big
