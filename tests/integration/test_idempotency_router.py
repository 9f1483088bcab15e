"""Idempotency-Key through the router, in-process against real HTTP backends
(issue 9 #2): at most once per key, settled on every path, bound to its body."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tests.integration.test_router_deadlines import router_over

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


async def post(url: str, body: dict, key: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + PATH, json=body, headers={"Idempotency-Key": key}) as r:
            return r.status, dict(r.headers), await r.read()


async def test_a_keyed_request_that_timed_out_runs_nowhere_else_and_never_again():
    runs: list[str] = []
    backends = {"a": counting_backend(runs, "a", "hang"), "b": counting_backend(runs, "b")}
    async with router_over(backends, retry={"per_try_timeout": 1.0}) as (router, url):
        router.table.backend("b").outstanding = 1  # the hanging node is picked first
        status, _, _ = await post(url, {"amount": 5}, "order-1")
        router.table.backend("b").outstanding -= 1
        assert status == 504 and runs == ["a"], "not retried on b: a may have run it"
        status, headers, _ = await post(url, {"amount": 5}, "order-1")  # the client retries
        assert status == 504 and headers.get("X-Vigil-Idempotent-Replay") == "true"
        assert runs == ["a"], "the client's retry did not run it a third (or second) time"


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
        router.table.backend("dead").url = "http://127.0.0.1:9"  # nothing listens: refused
        router.table.backend("b").outstanding = 1
        status, headers, _ = await post(url, {"amount": 5}, "order-4")
        router.table.backend("b").outstanding -= 1
        assert status == 200 and headers["X-Vigil-Node"] == "b" and headers["X-Vigil-Attempts"] == "2"
        assert runs == ["b"]
