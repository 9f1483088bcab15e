"""Idempotency-Key through the router, in-process against real HTTP backends
(issue 9 #2, issue 22 #2, #3): at most once per key, settled on every path,
bound to its body and its caller, whatever the client does meanwhile, and
across the routers that share one store (the in-memory one, held to etcd by
the conformance suite; tests/integration/test_idempotency_cluster.py runs
real router processes on a real etcd)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from aiohttp import web

from tests.integration.routerharness import serve
from vigil.procs import free_ports
from vigil.router.config import parse_router_config
from vigil.router.http1 import Incoming
from vigil.router.proxy import Router
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

PATH = "/v1/payments"  # not an idempotent path: only the key protects it


def counting_backend(runs: list[str], name: str, mode: str = "ok") -> web.Application:
    """ok: answers; hang: never answers; cut: starts an answer and dies mid-body."""
    async def pay(request: web.Request) -> web.StreamResponse:
        runs.append(name)
        await request.read()
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "cut":
            resp = web.StreamResponse(headers={"Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b"x" * 10)
            request.transport.close()
            return resp
        return web.json_response({"paid": True, "by": name})
    app = web.Application()
    app.add_routes([web.post(PATH, pay)])
    return app


async def post(url: str, body: dict, key: str, auth: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Idempotency-Key": key, **({"Authorization": auth} if auth else {})}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + PATH, json=body, headers=headers) as r:
            return r.status, dict(r.headers), await r.read()


@contextlib.asynccontextmanager
async def routers_over(backends: dict[str, web.Application], n: int, store: MemoryStore | None = None,
                       **cfg):
    """`n` routers (config overrides in `cfg`) in front of the same backends,
    sharing one store (as every router of a cluster shares etcd)."""
    ports = free_ports(len(backends) + 2 * n)
    runners = [await serve(app, port) for app, port in zip(backends.values(), ports)]
    store = store or MemoryStore()
    store.start()
    keys = shared_keys(*backends)  # key-ring members that heartbeat: a router routes to no other
    for (name, _), port in zip(backends.items(), ports):
        await store.put(Keys("d").member(name), json.dumps(member_record(f"http://127.0.0.1:{port}")))
    routers, urls, beats = [], [], []
    try:
        for i in range(n):
            port, hb = ports[len(backends) + 2 * i:len(backends) + 2 * i + 2]
            router = Router(parse_router_config({
                "cluster": "d", "name": f"r{i}", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                "listen": {"port": port}, "heartbeat": {"port": hb, **keys["ring"]}, **cfg}), store)
            routers.append(router)
            await router.start()
            await router.listen("127.0.0.1", port)
            beats.append(HeartbeatSender("d", keys, list(backends), ("127.0.0.1", hb)).start())
            await wait_until(lambda: len(router.table.eligible(0.0)) == len(backends), 5,
                             "every backend to be learnt")
            urls.append(f"http://127.0.0.1:{port}")
        yield routers, urls
    finally:
        for b in beats:
            await b.stop()
        for router in routers:
            await router.stop()
        for r in runners:
            await r.cleanup()
        await store.close()


@contextlib.asynccontextmanager
async def router_over(backends: dict[str, web.Application], **cfg):
    """One router (config overrides in `cfg`) in front of the given backends."""
    async with routers_over(backends, 1, **cfg) as ((router,), (url,)):
        yield router, url


async def test_a_keyed_request_that_timed_out_runs_nowhere_else_and_never_again():
    runs: list[str] = []
    backends = {"a": counting_backend(runs, "a", "hang"), "b": counting_backend(runs, "b")}
    async with router_over(backends, retry={"per_try_timeout": 1.0}) as (router, url):
        router.table.started(router.table.backend("b"))  # the hanging node is picked first
        status, _, _ = await post(url, {"amount": 5}, "order-1")
        router.table.finished(router.table.backend("b"))
        assert status == 504 and runs == ["a"], "not retried on b: a may have run it"
        status, headers, _ = await post(url, {"amount": 5}, "order-1")  # the client retries
        assert status == 504 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"], "the client's retry did not run it a third (or second) time"


async def test_a_safe_request_that_may_have_run_keeps_its_key_when_no_node_is_left_to_retry():
    """A path the router may retry (idempotent_paths) timed out on the only node: the
    503 "no node left" must keep the key as an unknown outcome, like the 504 above,
    or the client's retry runs it again (fresh-eyes review of issue 22)."""
    runs: list[str] = []
    retry = {"per_try_timeout": 1.0, "idempotent_paths": [PATH]}
    async with router_over({"a": counting_backend(runs, "a", "hang")}, retry=retry) as (_, url):
        status, headers, _ = await post(url, {"amount": 5}, "order-safe")
        assert status == 503 and headers.get("X-Vigil-Outcome") == "unknown", headers
        status, headers, _ = await post(url, {"amount": 5}, "order-safe")
        assert status == 503 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"], "the retry did not run it a second time"


async def test_a_backend_dying_mid_answer_does_not_hold_the_key_forever():
    runs: list[str] = []
    async with router_over({"a": counting_backend(runs, "a", "cut")}) as (_, url):
        status, _, _ = await asyncio.wait_for(post(url, {"amount": 5}, "order-2"), 10)
        assert status == 502
        status, headers, _ = await asyncio.wait_for(post(url, {"amount": 5}, "order-2"), 5)
        assert status == 502 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"]


async def test_the_same_key_with_another_body_is_refused():
    runs: list[str] = []
    async with router_over({"a": counting_backend(runs, "a")}) as (_, url):
        assert (await post(url, {"amount": 5}, "order-3"))[0] == 200
        status, _, body = await post(url, {"amount": 500}, "order-3")
        assert status == 422 and b"first used with another request" in body
        status, headers, body = await post(url, {"amount": 5}, "order-3")
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"]


async def test_a_node_that_refused_the_connection_never_got_it_so_another_may_run_it():
    runs: list[str] = []
    async with router_over({"dead": counting_backend(runs, "dead"), "b": counting_backend(runs, "b")}) \
            as (router, url):
        router.table.member("dead", "http://127.0.0.1:9")  # nothing listens: refused
        router.table.started(router.table.backend("b"))
        status, headers, _ = await post(url, {"amount": 5}, "order-4")
        router.table.finished(router.table.backend("b"))
        assert status == 200 and headers["X-Vigil-Node"] == "b" and headers["X-Vigil-Attempts"] == "2"
        assert runs == ["b"]


def gated_backend(runs: list[str], name: str, entered: asyncio.Event, gate: asyncio.Event,
                  status: int = 200) -> web.Application:
    """Counts a run, says it started (`entered`), answers `status` once `gate` opens."""
    async def pay(request: web.Request) -> web.Response:
        body = await request.read()
        runs.append(name)
        entered.set()
        await gate.wait()
        return web.json_response({"paid": body.decode(), "by": name, "run": len(runs)}, status=status)
    app = web.Application()
    app.add_routes([web.post(PATH, pay)])
    return app


def raw_post(body: bytes, key: str, length: int | None = None) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(body) if length is None else length}"
            "\r\n\r\n").encode() + body


async def test_a_client_that_gives_up_after_sending_never_gets_it_run_twice():
    """B2, the review's reproduction: the client times out while the backend works,
    then retries with the same key. The first attempt finishes on its own and its
    real answer is the retry's."""
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    async with router_over({"a": gated_backend(runs, "a", entered, gate)}) as (_, url):
        first = asyncio.create_task(post(url, {"amount": 5}, "pay-1"))
        await asyncio.wait_for(entered.wait(), 10)  # the request reached the backend
        first.cancel()  # the client's timeout: it closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await first
        retry = asyncio.create_task(post(url, {"amount": 5}, "pay-1"))
        gate.set()
        status, headers, body = await asyncio.wait_for(retry, 10)
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert json.loads(body)["run"] == 1 and runs == ["a"], "executed once"


async def test_a_retry_after_the_abandoned_first_finished_gets_its_real_answer():
    """B2, the other order: the retry comes after the first (whose client left) ended."""
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    async with router_over({"a": gated_backend(runs, "a", entered, gate)}) as (router, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(raw_post(b'{"amount": 5}', "pay-2"))
        await asyncio.wait_for(entered.wait(), 10)
        writer.close()  # gone before any answer
        await wait_until(lambda: router.active == 0, 10, "the router to see the client leave")
        gate.set()
        await wait_until(lambda: not router.keyed.pending, 10, "the first attempt to finish on its own")
        status, headers, body = await asyncio.wait_for(post(url, {"amount": 5}, "pay-2"), 10)
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert json.loads(body)["by"] == "a" and runs == ["a"]


async def test_a_client_that_left_before_its_body_arrived_ran_nothing():
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    gate.set()
    async with router_over({"a": gated_backend(runs, "a", entered, gate)}) as (router, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(raw_post(b'{"amo', "pay-3", length=len(b'{"amount": 5}')))
        await writer.drain()
        writer.close()
        status, headers, _ = await asyncio.wait_for(post(url, {"amount": 5}, "pay-3"), 10)
        assert status == 200 and "X-Vigil-Idempotent-Replay" not in headers
        assert runs == ["a"], "the cut request never reached a backend; the retry ran once"


async def test_a_second_router_never_runs_a_key_the_first_runs_or_ran():
    """B3: the VIP moved, the client's retry reaches another router: 409 while the
    first runs it, then the first's answer, from the marker in the store."""
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    async with routers_over({"a": gated_backend(runs, "a", entered, gate)}, 2) as ((ra, rb), (a, b)):
        first = asyncio.create_task(post(a, {"amount": 5}, "pay-4"))
        await asyncio.wait_for(entered.wait(), 10)
        status, headers, body = await asyncio.wait_for(post(b, {"amount": 5}, "pay-4"), 10)
        assert status == 409 and headers["Retry-After"] == "1" and b"in flight at router 'r0'" in body
        gate.set()
        assert (await asyncio.wait_for(first, 10))[0] == 200
        status, headers, body = await asyncio.wait_for(post(b, {"amount": 5}, "pay-4"), 10)
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert json.loads(body)["run"] == 1
        status, _, body = await asyncio.wait_for(post(b, {"amount": 6}, "pay-4"), 10)
        assert status == 422 and b"first used with another request" in body
        assert runs == ["a"]


async def test_a_key_this_router_forgot_is_still_never_run_again():
    """B3, eviction: the router's own memory drops its oldest key; the store keeps it."""
    runs: list[str] = []
    async with router_over({"a": counting_backend(runs, "a")}) as (router, url):
        router.cache.max_entries = 1
        for key in ("pay-5", "pay-6"):
            assert (await post(url, {"amount": 5}, key))[0] == 200
        assert len(router.cache._done) == 1, "pay-5 was dropped from the router's memory"
        status, headers, _ = await post(url, {"amount": 5}, "pay-5")
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a", "a"], "each key ran once"


async def test_a_router_restarted_with_an_empty_memory_never_runs_a_key_again():
    runs: list[str] = []
    store = MemoryStore()
    async with routers_over({"a": counting_backend(runs, "a")}, 1, store) as (_, (url,)):
        assert (await post(url, {"amount": 5}, "pay-7"))[0] == 200
    async with routers_over({"a": counting_backend(runs, "a")}, 1, store) as (_, (url,)):
        status, headers, body = await post(url, {"amount": 5}, "pay-7")
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"]


async def test_a_backends_own_5xx_settles_the_key():
    """B-L6: a 500 (passed through) or a 503 (not retried: unsafe) after the backend
    may have acted is kept like any outcome; a 4xx did nothing and frees the key."""
    for status, key in ((500, "pay-8"), (503, "pay-9"), (400, "pay-10")):
        runs: list[str] = []
        entered, gate = asyncio.Event(), asyncio.Event()
        gate.set()
        async with router_over({"a": gated_backend(runs, "a", entered, gate, status)}) as (_, url):
            first, _, _ = await post(url, {"amount": 5}, key)
            again, headers, _ = await post(url, {"amount": 5}, key)
            assert first == again == status
            if status < 500:
                assert runs == ["a", "a"] and "X-Vigil-Idempotent-Replay" not in headers
            else:
                assert runs == ["a"] and headers.get("X-Vigil-Idempotent-Replay") == "true", status


async def test_the_key_is_the_callers_own():
    """B-L6: another caller who knows a key and a body gets its own run, never the
    first caller's answer; the first caller still gets its replay."""
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    gate.set()
    async with router_over({"a": gated_backend(runs, "a", entered, gate)}) as (_, url):
        _, _, mine = await post(url, {"amount": 5}, "pay-11", "Bearer alice")
        status, headers, theirs = await post(url, {"amount": 5}, "pay-11", "Bearer mallory")
        assert status == 200 and "X-Vigil-Idempotent-Replay" not in headers
        assert json.loads(theirs)["run"] == 2 and json.loads(mine)["run"] == 1
        status, headers, again = await post(url, {"amount": 5}, "pay-11", "Bearer alice")
        assert headers.get("X-Vigil-Idempotent-Replay") == "true" and again == mine
        assert runs == ["a", "a"]


async def test_a_keyed_request_is_refused_while_the_store_is_unreachable():
    """Fail closed: at most once is the promise, so no record, no run; a request
    without a key is served as ever (the data path never waits for etcd)."""
    runs: list[str] = []
    store = MemoryStore()
    async with routers_over({"a": counting_backend(runs, "a")}, 1, store) as (_, (url,)):
        store.available = False
        status, headers, body = await post(url, {"amount": 5}, "pay-12")
        assert status == 503 and headers["Retry-After"] == "1" and b"recorded in etcd" in body
        assert runs == []
        async with aiohttp.ClientSession() as http:
            async with http.post(url + PATH, json={"amount": 5}) as r:
                assert r.status == 200 and runs == ["a"]
        store.available = True
        assert (await post(url, {"amount": 5}, "pay-12"))[0] == 200 and runs == ["a", "a"]


async def test_an_answer_too_large_for_the_store_is_never_run_again_elsewhere():
    runs: list[str] = []

    async def big(request: web.Request) -> web.Response:
        runs.append("a")
        return web.Response(body=b"x" * (100 << 10))
    app = web.Application()
    app.add_routes([web.post(PATH, big)])
    async with routers_over({"a": app}, 2) as (_, (a, b)):
        assert (await post(a, {"amount": 5}, "pay-13"))[0] == 200
        status, headers, body = await post(a, {"amount": 5}, "pay-13")
        assert status == 200 and len(body) == 100 << 10, "this router kept it (up to 1 MiB)"
        status, _, body = await post(b, {"amount": 5}, "pay-13")
        assert status == 409 and b"too large to keep" in body
        assert runs == ["a"]


async def test_a_key_longer_than_255_characters_is_refused():
    runs: list[str] = []
    async with router_over({"a": counting_backend(runs, "a")}) as (_, url):
        status, _, body = await post(url, {"amount": 5}, "k" * 256)
        assert status == 400 and b"at most 255" in body and runs == []


async def test_a_router_stopped_gracefully_records_what_it_was_running():
    """A restart (SIGTERM, then a new process) while a keyed request runs: the
    attempt finishes and its outcome is recorded before the router goes, so the
    retry replays it; a key that arrives meanwhile is refused with nothing sent."""
    runs: list[str] = []
    entered, gate = asyncio.Event(), asyncio.Event()
    store = MemoryStore()
    async with routers_over({"a": gated_backend(runs, "a", entered, gate)}, 2, store) as ((ra, _), (a, b)):
        first = asyncio.create_task(post(a, {"amount": 5}, "pay-14"))
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(ra.stop())
        await wait_until(lambda: ra.keyed.draining, 10, "router A to start draining")
        late = await ra.keyed.handle(Incoming("POST", PATH, [], b"{}", True), "pay-15", 0.0)
        assert late.status == 503 and b"stopping: nothing was sent" in late.body
        gate.set()
        await asyncio.wait_for(stopping, 20)
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(first, 10)
        status, headers, body = await asyncio.wait_for(post(b, {"amount": 5}, "pay-14"), 10)
        assert status == 200 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert json.loads(body)["run"] == 1 and runs == ["a"]
