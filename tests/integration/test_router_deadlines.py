"""The router's inference deadlines and admission, in-process on the in-memory
store, against real HTTP backends: a long generation that keeps producing
passes, a stream that falls silent is cut, a stream that stalls before its
first byte is retried elsewhere, and a full cluster sheds with 429 at once."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from tests.integration.routerharness import router_over  # also the router tests' and test_fuzz_router's


def sse_backend(chunks: int, every: float, stall_after: int | None = None,
                stall_first: bool = False) -> web.Application:
    """Streams `chunks` events `every` seconds apart; falls silent for good after
    `stall_after` events (or before the first one)."""
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if stall_first:
            await asyncio.Event().wait()
        for i in range(chunks):
            if stall_after is not None and i == stall_after:
                await asyncio.Event().wait()
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(every)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    app = web.Application()
    app.add_routes([web.route("*", "/v1/completions", stream)])
    return app


async def test_a_stream_four_times_longer_than_every_timeout_that_keeps_producing_passes():
    """Deadlines bound silence, never total duration: 20 s of one event a second
    through a router whose per-try timeout is 3 s and idle timeout 5 s (the suite
    ran 60 s of it before; 4x the longest timeout shows the same and costs 40 s less)."""
    retry = {"per_try_timeout": 3.0, "idle_timeout": 5.0}  # both far below the stream's length
    async with router_over({"n1": sse_backend(20, 1.0)}, retry=retry) as (_, url):
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/completions", json={"stream": True}) as r:
                assert r.status == 200
                body = await r.read()
        assert time.monotonic() - t0 >= 19
        events = body.decode().split("\n\n")
        assert events[:20] == [f"data: {i}" for i in range(20)] and events[20] == "data: [DONE]"


async def test_a_stream_that_falls_silent_is_cut_by_the_idle_deadline():
    retry = {"per_try_timeout": 3.0, "idle_timeout": 2.0}
    async with router_over({"n1": sse_backend(10, 0.1, stall_after=3)}, retry=retry) as (router, url):
        t0 = time.monotonic()
        got = b""
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/completions", json={"stream": True}) as r:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in r.content.iter_any():
                        got += chunk
        elapsed = time.monotonic() - t0
        assert got.startswith(b"data: 0\n\ndata: 1\n\ndata: 2\n\n"), "what was produced reached the client"
        assert b'"code": "stream_broken"' in got, "then an error event saying why (vigil.router.resume)"
        assert 2.0 <= elapsed < 10, "cut after the idle deadline, not before and not never"
        assert router.table.backend("n1").outstanding == 0


async def test_a_stream_stalled_before_its_first_byte_is_retried_on_another_node():
    retry = {"per_try_timeout": 2.0, "idle_timeout": 5.0}
    backends = {"a-stalls": sse_backend(3, 0.05, stall_first=True), "b-works": sse_backend(3, 0.05)}
    async with router_over(backends, retry=retry) as (router, url):
        router.table.started(router.table.backend("b-works"))  # the stalled node is picked first
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/v1/completions") as r:  # GET: safe to retry
                body = await r.read()
                node, attempts = r.headers["X-Vigil-Node"], r.headers["X-Vigil-Attempts"]
        router.table.finished(router.table.backend("b-works"))
        assert r.status == 200 and node == "b-works" and attempts == "2"
        assert body.endswith(b"data: [DONE]\n\n")


def slow_backend(seconds: float) -> web.Application:
    async def work(_: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response({"data": []})
    app = web.Application()
    app.add_routes([web.post("/v1/embeddings", work)])
    return app


async def test_a_full_cluster_sheds_with_429_and_retry_after_at_once():
    admission = {"initial_limit": 1, "min_limit": 1, "max_limit": 1, "queue_wait": 1.0}
    backends = {"n1": slow_backend(1.5), "n2": slow_backend(1.5)}
    async with router_over(backends, admission=admission) as (router, url):
        async with aiohttp.ClientSession() as http:
            async def one() -> tuple[int, float, dict]:
                t0 = time.monotonic()
                async with http.post(url + "/v1/embeddings", json={"input": "x"}) as r:
                    await r.read()
                    return r.status, time.monotonic() - t0, dict(r.headers)
            # Teach the router the latency first: 2 slots, 1.5 s each.
            assert [s for s, _, _ in await asyncio.gather(one(), one())] == [200, 200]
            results = await asyncio.gather(*(one() for _ in range(10)))
        ok = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 429]
        assert len(ok) + len(shed) == 10 and ok and shed
        assert all(r[1] < 0.5 for r in shed), "shed requests learn it at once"
        assert all(int(h["Retry-After"]) >= 1 and int(h["retry-after-ms"]) > 0 for _, _, h in shed)
        st = router.table
        assert all(b.why_not(0.0) is None and b.failures == 0 for b in st.backends.values()), \
            "load never inhibits or ejects a node"
