"""The router and the inference supervisor in-process, on the in-memory store
(held to etcd by the conformance suite), against real HTTP servers."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.integration.routerharness import router_over, serve
from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.store.events import read_events
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.wait import wait_until
from vigil.testing.keys import shared_keys

KEYS = shared_keys('a')


def streaming_backend(release: asyncio.Event) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await release.wait()  # the second chunk only after the client saw the first
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp
    app = web.Application()
    app.add_routes([web.post("/v1/completions", stream)])
    return app


async def test_streaming_response_passes_through_without_buffering():
    release = asyncio.Event()
    async with router_over({"n1": streaming_backend(release)}, cluster="s") as (_, url):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json={}) as r:
                assert r.headers["X-Vigil-Node"] == "n1"
                first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                assert first == b"data: first\n\n", "the first event arrived while the stream is open"
                release.set()
                assert await r.content.read() == b"data: second\n\n"


async def test_agent_watches_an_external_server_by_url(tmp_path):
    api_port, hb_port, srv_port = free_ports(3)
    healthy = {"on": True}

    async def embeddings(_: web.Request) -> web.Response:
        if not healthy["on"]:
            return web.json_response({"error": {"message": "engine wedged"}}, status=503)
        return web.json_response({"data": [{"embedding": [0.0]}]})
    app = web.Application()
    app.add_routes([web.post("/v1/embeddings", embeddings)])
    srv = await serve(app, srv_port)
    cfg = parse_config({"cluster": "ext", "node": "a", "data_dir": str(tmp_path),
                        "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
                        "heartbeat": {**KEYS["a"], "port": hb_port},
                        "inference": {"url": f"http://127.0.0.1:{srv_port}", "canary_interval": 0.1,
                                      "canary_timeout": 0.5}})
    store = MemoryStore()
    store.start()
    agent = Agent(cfg, store=store)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        await wait_until(lambda: agent.inference.ready, 10, "ready from canaries")
        assert agent.inference.describe()["managed"] is False and agent.inference.proc is None
        rec = await wait_until(lambda: _record(store), 10, "the member record")
        await wait_until(lambda: (_record(store) or {}).get("inference", {}).get("ready"),
                         10, "readiness published")
        healthy["on"] = False
        await wait_until(lambda: not agent.inference.ready, 10, "not ready after failed canaries")
        assert "HTTP 503" in agent.inference.judge.reason and rec
    finally:
        stop.set()
        await task
        await srv.cleanup()


def _record(store: MemoryStore):
    kv = store._kv.get(Keys("ext").member("a"))
    return kv and json.loads(kv.value)


def load_reporting_engine(state: dict) -> web.Application:
    """An external engine with a load report: `state` says what it reports, and
    whether its report answers at all (a frozen engine answers nothing)."""
    async def load(_: web.Request) -> web.Response:
        if state["frozen"]:
            await asyncio.Event().wait()
        state["completed"] += state["advance"]  # one completion between two looks: progress
        state["looks"] += 1
        return web.json_response({"pending": state["pending"], "completed": state["completed"]})

    async def embeddings(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"embedding": [0.0]}]})
    app = web.Application()
    app.add_routes([web.get("/v2/load", load), web.post("/v1/embeddings", embeddings)])
    return app


async def _agent_on(tmp_path, srv_port: int, **inference):
    api_port, hb_port = free_ports(2)
    cfg = parse_config({"cluster": "ext", "node": "a", "data_dir": str(tmp_path),
                        "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
                        "heartbeat": {**KEYS["a"], "port": hb_port},
                        "inference": {"url": f"http://127.0.0.1:{srv_port}", "canary_interval": 0.2,
                                      "canary_timeout": 0.5, "load_interval": 0.1, **inference}})
    store = MemoryStore()
    store.start()
    agent = Agent(cfg, store=store)
    stop = asyncio.Event()
    return agent, stop, asyncio.get_running_loop().create_task(agent.run(stop))


async def test_busy_engine_stays_ready_a_silent_one_is_hung_a_stalled_one_too(tmp_path):
    (srv_port,) = free_ports(1)
    state = {"pending": 0, "completed": 0, "frozen": False, "advance": 0, "looks": 0}
    srv = await serve(load_reporting_engine(state), srv_port)
    agent, stop, task = await _agent_on(tmp_path, srv_port, silence_window=0.5, stall_window=2.0)
    try:
        await wait_until(lambda: agent.inference.ready, 10, "ready from a canary")
        state["pending"], state["advance"] = 50, 1  # a deep queue, completions advancing
        await wait_until(lambda: agent.inference.judge.verdict == "busy", 5, "busy")
        seen: set[str] = set()
        start = state["looks"]

        def thirty_looks_later() -> bool:
            seen.add(agent.inference.judge.verdict)
            return state["looks"] >= start + 30
        await wait_until(thirty_looks_later, 10, "30 looks at a busy engine")  # 3 s, > stall_window
        assert seen == {"busy"} and agent.inference.ready, "busy the whole time, never hung"
        assert agent.inference.describe()["pending"] == 50
        state["advance"] = 0
        state["frozen"] = True  # the report stops answering
        t0 = asyncio.get_running_loop().time()
        await wait_until(lambda: not agent.inference.ready, 5, "hung after the silence window")
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert "load probe unanswered" in agent.inference.judge.reason
        state["completed"] += 1
        state["frozen"] = False
        await wait_until(lambda: agent.inference.ready, 5, "ready again once completions advance")
        await wait_until(lambda: agent.inference.judge.verdict == "busy", 5, "busy")
        await wait_until(lambda: not agent.inference.ready, 5, "hung: 50 pending, nothing completes")
        assert "50 pending and nothing completed" in agent.inference.judge.reason
        await agent.events.flush()
        causes = [e["cause"] for e in await read_events(agent.store, Keys("ext"))
                  if e["kind"] == "inference_not_ready"]
        assert any(c.startswith("hung: load probe unanswered") for c in causes), causes
    finally:
        stop.set()
        await task
        await srv.cleanup()


def answering(status: int, body: dict) -> web.Application:
    async def completions(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)
    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions)])
    return app


NOT_READY = {"error": {"message": "not ready: loading the model", "type": "server_error", "code": "not_ready"}}


async def test_a_post_an_engine_refused_as_not_ready_goes_to_another_node_and_a_plain_503_does_not():
    """A model server that is loading answers 503 `not_ready`: it ran nothing,
    so even a POST goes elsewhere (the lab's streams bench lost 1,302 streams
    to a loading server the router kept choosing in panic mode). A 503 that
    does not say so may have run: an unsafe request ends with it."""
    ok = answering(200, {"choices": [{"text": "hi"}]})
    async with router_over({"n1": answering(503, NOT_READY), "n2": ok}, cluster="nr") as (router, url):
        async with aiohttp.ClientSession() as http:
            for _ in range(6):  # the router takes turns: n1 comes first in some of them
                async with http.post(f"{url}/v1/completions", json={}) as r:
                    assert (r.status, r.headers["X-Vigil-Node"]) == (200, "n2"), await r.text()
            (admin_port,) = free_ports(1)
            await router.listen_admin("127.0.0.1", admin_port)
            async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                count = [line for line in (await r.text()).splitlines()
                         if line.startswith('vigil_router_backend_not_ready_total{node="n1"}')]
            assert count and float(count[0].split()[-1]) >= 1, "the refusals are counted"
    busy = {"error": {"message": "engine wedged", "code": "internal"}}
    async with router_over({"n1": answering(503, busy), "n2": answering(503, busy)}, cluster="nr2") as (_, url):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json={}) as r:
                assert r.status == 503 and "not retried: unsafe request" in await r.text()


def full(retry_ms: int) -> web.Application:
    """An engine that sheds every request (429) and says when to retry."""
    async def embeddings(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "engine full", "code": "engine_full"}}, status=429,
                                 headers={"retry-after-ms": str(retry_ms), "Retry-After": "2"})
    app = web.Application()
    app.add_routes([web.post("/v1/embeddings", embeddings)])
    return app


async def test_a_client_that_retries_before_its_retry_after_is_held_until_then():
    """A retry storm (issue 26 #6): a connection told to retry after R that sends
    again at once is held until R has passed, then served as any request; another
    client's connection is not held for it."""
    async with router_over({"n1": full(1500), "n2": full(1500)}, cluster="storm") as (router, url):
        async with aiohttp.ClientSession() as storming, aiohttp.ClientSession() as other:
            async with storming.post(f"{url}/v1/embeddings", json={"input": "x"}) as r:
                assert r.status == 429
                told = float(r.headers["retry-after-ms"]) / 1000
            assert told >= 1.0, "the router passes on a wait worth holding for"
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def again() -> float:
                async with storming.post(f"{url}/v1/embeddings", json={"input": "x"}) as r:  # at once: a storm
                    assert r.status == 429
                return loop.time() - t0
            storm = asyncio.ensure_future(again())
            await wait_until(lambda: router.pacer.held == 1, 5, "the storming request held")
            t1 = loop.time()
            async with other.post(f"{url}/v1/embeddings", json={"input": "x"}) as r:  # while it is held
                assert r.status == 429
            assert loop.time() - t1 < told - 0.2, "a client that was told nothing is not held"
            held = await storm
            assert held >= told - 0.2, f"answered after {held:.2f} s though told to wait {told:.2f} s"
            assert router.pacer.paced == 1 and router.pacer.held == 0
            async with storming.post(f"{url}/v1/embeddings", json={"input": "x"}) as r:
                assert r.status == 429
            gone = asyncio.ensure_future(storming.post(f"{url}/v1/embeddings", json={"input": "x"}))
            await wait_until(lambda: router.pacer.held == 1, 5, "a second storming request held")
            gone.cancel()  # the client goes away while it is held
            await storming.close()
            # well before the hold's own end (told s): the client's going cancels it
            await wait_until(lambda: router.pacer.held == 0, told - 0.3, "the hold released with its client")
