"""The router's own HTTP/1.1 data plane (vigil.router.http1) against raw
sockets and a real backend: what it forwards, what it refuses, and that bad
clients cost a connection, never the router."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.integration.test_router_deadlines import router_over
from vigil.router.front_close import sweep
from vigil.router.http1 import FrontProtocol, Listener


def echo_backend() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.path_qs, "body": len(body),
                                  "headers": [[k, v] for k, v in request.headers.items()]})
    app = web.Application()
    app.add_routes([web.route("*", "/{tail:.*}", echo)])
    return app


async def raw(url: str, data: bytes, until: bytes = b"", timeout: float = 5.0) -> bytes:
    host, port = url.split("//")[1].split(":")
    r, w = await asyncio.open_connection(host, int(port))
    w.write(data)
    out = b""
    try:
        while not (until and out.count(until) >= 1 and out.endswith(b"}")):
            chunk = await asyncio.wait_for(r.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    finally:
        w.close()
    return out


async def test_hop_headers_are_stripped_repeats_kept_and_the_client_named():
    async with router_over({"n1": echo_backend()}) as (_, url):
        req = (b"POST /v1/x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
               b"X-Secret: s\r\nX-Tag: one\r\nX-Tag: two\r\nX-Forwarded-For: 10.231.0.9\r\n"
               b"Content-Length: 3\r\n\r\nabc")
        out = await raw(url, req, until=b"HTTP/1.1 200")
        assert out.startswith(b"HTTP/1.1 200") and b"X-Vigil-Node: n1" in out
        body = out.split(b"\r\n\r\n", 1)[1].decode()
        assert '"path": "/v1/x?q=1"' in body and '"body": 3' in body
        assert '"X-Secret"' not in body and '"Connection"' not in body, "hop-by-hop and Connection-listed"
        assert '["X-Tag", "one"], ["X-Tag", "two"]' in body, "repeated headers pass as they came"
        assert '["X-Forwarded-For", "10.231.0.9, 127.0.0.1"]' in body


async def test_pipelined_requests_are_answered_in_order():
    async with router_over({"n1": echo_backend()}) as (_, url):
        req = b"".join(f"GET /v1/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(3))
        req += b"GET /v1/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        out = await raw(url, req)
        paths = [p.split(b'"')[0] for p in out.split(b'"path": "')[1:]]
        assert paths == [b"/v1/0", b"/v1/1", b"/v1/2", b"/v1/last"]


async def test_garbage_a_huge_head_and_a_huge_body_are_refused_and_the_router_serves_on():
    async with router_over({"n1": echo_backend()}, ) as (router, url):
        assert (await raw(url, b"\x00\x01 nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert (await raw(url, huge)).startswith(b"HTTP/1.1 400")
        big = router.cfg.max_body + 1
        out = await raw(url, b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % big
                        + b"x" * big, until=b"HTTP/1.1 413")
        assert out.startswith(b"HTTP/1.1 413")
        out = await raw(url, b"HEAD /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n"), "HEAD: no body"
        ok = await raw(url, b"GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")


async def test_idle_and_slow_clients_are_closed_by_the_sweep():
    listener = Listener(1024, idle=0.4, head=0.8)
    conns = listener.conns

    async def never(req, reply):
        raise AssertionError("no request completes here")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FrontProtocol(never, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sweeper = loop.create_task(sweep(listener))
    try:
        _, idle_w = await asyncio.open_connection("127.0.0.1", port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and never the rest
        await asyncio.wait_for(slow_r.read(), 10)  # EOF: the sweep closed it
        assert not conns, "both the idle and the half-sent connection were closed"
        idle_w.close()
    finally:
        sweeper.cancel()
        server.close()
