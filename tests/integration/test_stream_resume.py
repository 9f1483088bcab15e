"""Streamed generations continued on another node when theirs fails
mid-stream (vigil.router.resume), in-process: the router on the in-memory
store (held to etcd by the conformance suite) in front of real model
servers (vigil.serve) running the reference language model, whose fault
injection resets a stream's connection after N tokens, as a crash looks to
the router. Checked at every cut position, greedy and seeded sampling: the
client's text and token ids equal an uninterrupted run's, with one [DONE].
Real processes killed and stopped mid-stream: tests/system/test_stream_failover.py.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from vigil.procs import free_ports
from vigil.router.config import parse_router_config
from vigil.router.proxy import Router
from vigil.serve.completions import PREFILL_CHUNK
from vigil.serve.generate import ReferenceLM
from vigil.serve.model import NoEmbeddings
from vigil.serve.server import ModelServer
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

MODEL = ReferenceLM.model_id


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


class Front:
    """Three model servers and a router in front of them."""

    def __init__(self):
        self.servers: dict[str, ModelServer] = {}
        self.runners: list[web.AppRunner] = []
        self.store = MemoryStore()
        self.router: Router | None = None
        self.beats: HeartbeatSender | None = None
        self.url = ""

    async def start(self, **retry: Any) -> None:
        await self.start_with(ReferenceLM, 8, **retry)

    async def start_with(self, model: Any, slots: int, **retry: Any) -> None:
        """Three servers, each with `model()`, `slots` generations at once."""
        *ports, router_port, hb_port = free_ports(5)
        self.store.start()
        for i, port in enumerate(ports):
            name = f"n{i + 1}"
            srv = ModelServer(NoEmbeddings(), name, fault_injection=True, generator=model(), slots=slots)
            await srv.load()
            self.servers[name] = srv
            self.runners.append(await serve(srv.app, port))
            await self.store.put(Keys("s").member(name), json.dumps(member_record(f"http://127.0.0.1:{port}")))
        keys = shared_keys(*self.servers)  # key-ring members that heartbeat: the router routes to no other
        cfg = parse_router_config({"cluster": "s", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                                   "listen": {"port": router_port}, "retry": retry,
                                   "heartbeat": {"port": hb_port, **keys["ring"]}})
        self.router = Router(cfg, self.store)
        await self.router.start()
        await self.router.listen("127.0.0.1", router_port)
        self.beats = HeartbeatSender("s", keys, list(self.servers), ("127.0.0.1", hb_port)).start()
        self.url = f"http://127.0.0.1:{router_port}"
        await wait_until(lambda: len(self.router.table.eligible(0.0, frozenset())) == 3, 5, "three backends")

    async def stop(self) -> None:
        if self.beats:
            await self.beats.stop()
        if self.router:
            await self.router.stop()
        for r in self.runners:
            await r.cleanup()
        await self.store.close()


@pytest.fixture
async def front():
    f = Front()
    try:
        yield f
    finally:
        await f.stop()


async def read_stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a streamed request; its events, text, token ids, head and comment lines."""
    raw, cut = b"", False
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        try:
            async for chunk in r.content.iter_any():
                raw += chunk
        except aiohttp.ClientPayloadError:
            cut = True  # a stream that broke and was not resumed ends cut short
        headers = dict(r.headers)
    raw = raw.decode()
    events = [e for e in raw.split("\n\n") if e]
    data = [e[6:] for e in events if e.startswith("data: ")]
    chunks = [json.loads(d) for d in data if d != "[DONE]"]
    text, ids = "", []
    for c in chunks:
        for ch in c.get("choices", []):
            ids += ch.get("token_ids", [])
            text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
    return {"raw": raw, "data": data, "chunks": chunks, "text": text, "ids": ids, "headers": headers,
            "comments": [e for e in events if e.startswith(":")], "cut": cut}


def body_for(chat: bool, sampling: dict[str, Any], n: int = 40) -> dict[str, Any]:
    b: dict[str, Any] = {"model": MODEL, "max_tokens": n, "stream": True, **sampling}
    if chat:
        b["messages"] = [{"role": "user", "content": "what happens when a node fails?"}]
    else:
        b["prompt"] = "When the leader's node fails,"
    return b


async def set_cut(front: Front, name: str, after: int | None) -> None:
    front.servers[name].cut_streams_after = after


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 11}],
                         ids=["greedy", "seeded"])
async def test_a_stream_cut_at_any_token_resumes_exactly(front, chat, sampling):
    await front.start()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    async with aiohttp.ClientSession() as http:
        whole = await read_stream(http, front.url + path, body_for(chat, sampling))
        n = len(whole["ids"])
        assert n >= 20 and whole["data"].count("[DONE]") == 1
        for cut in range(0, n + 1):
            for name in front.servers:  # whichever node the router picks cuts it; continuations run whole
                await set_cut(front, name, cut)
            got = await read_stream(http, front.url + path, body_for(chat, sampling))
            assert got["ids"] == whole["ids"], f"cut after {cut} tokens"
            assert got["text"] == whole["text"], f"cut after {cut} tokens"
            assert got["data"].count("[DONE]") == 1 and got["data"][-1] == "[DONE]" and not got["cut"]
            assert len({c["id"] for c in got["chunks"]}) == 1, "one stream id throughout"
            if chat:
                roles = [c for c in got["chunks"] if (c["choices"] or [{}])[0].get("delta", {}).get("role")]
                assert len(roles) == 1, "the role chunk once"
            assert len(got["comments"]) == 1 and "vigil resumed" in got["comments"][0], got["raw"]
    assert front.router.metrics.stream_resumes.labels("resumed")._value.get() == n + 1


async def test_a_long_prompt_and_replay_are_prefilled_in_batches_counted_as_progress(front):
    """Prompt plus delivered ids past several prefill batches (PREFILL_CHUNK): the
    continuation is exact, and each batch moved the server's progress counter (the
    load report an agent tells busy from hung by)."""
    await front.start()
    body = {"model": MODEL, "prompt": " ".join(["failover"] * 150), "max_tokens": 160, "temperature": 0.9,
            "seed": 5, "stream": True}
    async with aiohttp.ClientSession() as http:
        whole = await read_stream(http, front.url + "/v1/completions", body)
        assert len(whole["ids"]) == 160
        for cut in (PREFILL_CHUNK - 1, PREFILL_CHUNK, 2 * PREFILL_CHUNK + 1, 159):
            for name in front.servers:
                await set_cut(front, name, cut)
            before = {name: srv.completed for name, srv in front.servers.items()}
            got = await read_stream(http, front.url + "/v1/completions", body)
            assert (got["ids"], got["text"]) == (whole["ids"], whole["text"]), f"cut after {cut} tokens"
            assert len(got["comments"]) == 1 and got["data"][-1] == "[DONE]"
            moved = sum(srv.completed - before[name] for name, srv in front.servers.items())
            # the cut stream's prefill and tokens, the continuation's prefill (prompt and
            # replay) and the rest: every token of the prompt twice, every generated one at least once
            assert moved >= 2 * 150 + 160 + cut, (cut, moved)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_a_stream_cut_inside_an_event_resumes_exactly(front, chat):
    """The node dies partway through writing an event (an ejection or a partition
    mid-segment, a kill that ends in RST): the router drops the part it got; no
    event glued onto the continuation's first, no token lost (review B6)."""
    await front.start()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    sampling = {"temperature": 0.9, "seed": 11}
    async with aiohttp.ClientSession() as http:
        whole = await read_stream(http, front.url + path, body_for(chat, sampling, n=12))
        n = len(whole["ids"])
        for after in (0, 1, n // 2, n):  # before the first token's event ... inside the finish event
            for mid in (1, 6, 40, 10_000):  # one byte, "data: ", mid-JSON, all but the last byte
                for srv in front.servers.values():
                    srv.cut_streams_after, srv.cut_mid_event = after, mid
                got = await read_stream(http, front.url + path, body_for(chat, sampling, n=12))
                where = f"cut after {after} tokens and {mid} bytes of the next event"
                assert got["ids"] == whole["ids"] and got["text"] == whole["text"], where
                assert got["data"].count("[DONE]") == 1 and not got["cut"], where
                assert len({c["id"] for c in got["chunks"]}) == 1, where
                if chat:
                    roles = [c for c in got["chunks"] if (c["choices"] or [{}])[0].get("delta", {}).get("role")]
                    assert len(roles) == 1, f"{where}: the role chunk once"
                assert len(got["comments"]) == 1 and "part was dropped" in got["comments"][0], where


async def test_continuation_reproduces_the_split_character_and_usage(front):
    """A character whose bytes span two tokens, cut between them: the text is
    whole; usage counts the whole generation."""
    await front.start()
    model = ReferenceLM()
    async with aiohttp.ClientSession() as http:
        for seed in range(50):  # a seed whose generation spells é (as this model always does) across two tokens
            body = {**body_for(False, {"temperature": 0.9, "seed": seed}, 60), "prompt": "the node café",
                    "stream_options": {"include_usage": True}}
            whole = await read_stream(http, front.url + "/v1/completions", body)
            split = [i for i, t in enumerate(whole["ids"]) if t == 0xC3]
            if split and len(whole["ids"]) == 60:
                break
        assert split, "no seed of 50 generated é"
        for name in front.servers:
            await set_cut(front, name, split[0] + 1)  # after the first byte of é
        got = await read_stream(http, front.url + "/v1/completions", body)
    assert got["text"] == whole["text"] and " café" in got["text"]
    assert model.encode(got["text"]) != got["ids"], "re-tokenising the text would not give these ids"
    usage = [c["usage"] for c in got["chunks"] if c.get("usage")]
    assert usage == [{"prompt_tokens": len(model.encode("the node café")), "completion_tokens": 60,
                      "total_tokens": len(model.encode("the node café")) + 60}]


async def test_resumes_are_bounded_and_a_spent_stream_ends_with_an_error_event(front):
    await front.start(max_resumes=0)
    for name in front.servers:
        await set_cut(front, name, 5)
    async with aiohttp.ClientSession() as http:
        got = await read_stream(http, front.url + "/v1/completions", body_for(False, {"temperature": 0}))
    errors = [c["error"] for c in got["chunks"] if "error" in c]
    assert len(errors) == 1 and errors[0]["code"] == "stream_broken"
    assert "resumed 0 times already, the limit (retry.max_resumes)" in errors[0]["message"]
    assert len(got["ids"]) == 5 and got["comments"] == []
    assert "[DONE]" not in got["data"] and got["cut"], "a broken stream does not claim to be complete"


def one_shot_backend(tail: bytes = b"") -> web.Application:
    """A backend streaming three chunks (then `tail`), whose connection then resets."""
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(['{"', 'state', '": "']):
            await resp.write(b"data: " + json.dumps({"id": "c1", "created": 1, "choices": [
                {"index": 0, "text": piece, "token_ids": [i], "finish_reason": None}]}).encode() + b"\n\n")
        await resp.write(tail)
        assert request.transport is not None
        request.transport.abort()
        return resp
    app = web.Application()
    app.add_routes([web.post("/v1/completions", stream)])
    return app


@contextlib.asynccontextmanager
async def router_before(app: web.Application):
    """The router in front of one backend `app`; yields (router, its URL)."""
    port, router_port, hb_port = free_ports(3)
    backend = await serve(app, port)
    store = MemoryStore()
    store.start()
    await store.put(Keys("s").member("n1"), json.dumps(member_record(f"http://127.0.0.1:{port}")))
    keys = shared_keys("n1")
    cfg = parse_router_config({"cluster": "s", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                               "listen": {"port": router_port}, "heartbeat": {"port": hb_port, **keys["ring"]}})
    router = Router(cfg, store)
    await router.start()
    await router.listen("127.0.0.1", router_port)
    beats = HeartbeatSender("s", keys, ["n1"], ("127.0.0.1", hb_port)).start()
    try:
        await wait_until(lambda: router.table.choose(0.0) is not None, 5, "the member to be learnt")
        yield router, f"http://127.0.0.1:{router_port}"
    finally:
        await beats.stop()
        await router.stop()
        await backend.cleanup()
        await store.close()


async def test_a_constrained_stream_is_not_resumed_and_says_why():
    async with router_before(one_shot_backend()) as (router, url):
        async with aiohttp.ClientSession() as http:
            got = await read_stream(http, url + "/v1/completions", {"model": "m", "prompt": "x", "stream": True,
                                                                   "response_format": {"type": "json_object"}})
        assert got["headers"]["X-Vigil-Resumable"].startswith("no: constrained output (response_format)")
        assert got["text"] == '{"state": "'
        errors = [c["error"] for c in got["chunks"] if "error" in c]
        assert len(errors) == 1 and "not resumed: constrained output (response_format)" in errors[0]["message"]
        assert got["cut"] and "[DONE]" not in got["data"]
        assert router.metrics.stream_resumes.labels("broken")._value.get() == 1


async def test_a_backend_error_event_is_passed_on_and_not_resumed():
    """The engine's own error (a context overflow, say) would recur on another node."""
    tail = b'data: {"error": {"message": "engine ran out of memory", "code": "oom"}}\n\n'
    async with router_before(one_shot_backend(tail)) as (router, url):
        async with aiohttp.ClientSession() as http:
            got = await read_stream(http, url + "/v1/completions", {"model": "m", "prompt": "x", "stream": True})
        assert got["headers"]["X-Vigil-Resumable"] == "yes"
        assert [c["error"]["code"] for c in got["chunks"] if "error" in c] == ["oom"]
        assert got["cut"] and "[DONE]" not in got["data"] and got["comments"] == []
        assert router.metrics.stream_resumes.labels("resumed")._value.get() == 0


async def test_resume_off_passes_the_break_to_the_client(front):
    await front.start(resume_streams=False)
    for name in front.servers:
        await set_cut(front, name, 3)
    async with aiohttp.ClientSession() as http:
        got = await read_stream(http, front.url + "/v1/completions", body_for(False, {"temperature": 0}))
    assert got["headers"]["X-Vigil-Resumable"] == "no: stream resume is off (retry.resume_streams)"
    assert len(got["ids"]) == 3 and "[DONE]" not in got["data"] and got["cut"]
    assert [c["error"]["code"] for c in got["chunks"] if "error" in c] == ["stream_broken"]


async def test_generation_requests_are_validated_with_the_field_named(front):
    await front.start()
    bad = [({"prompt": ""}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
           ({"prompt": "x", "temperature": 3}, "temperature"), ({"prompt": "x", "seed": "s"}, "seed"),
           ({"prompt": "x", "model": "gpt-4"}, "model"), ({"prompt": "x", "n": 2}, "n"),
           ({"prompt": "x", "vigil_continue": {"token_ids": [-1]}}, "vigil_continue"),
           ({"prompt": "x", "tools": [{"type": "function"}]}, "tools")]
    async with aiohttp.ClientSession() as http:
        for body, param in bad:
            async with http.post(front.url + "/v1/completions", json={"model": MODEL, **body}) as r:
                assert r.status == 400, (body, await r.text())
                assert (await r.json())["error"]["param"] == param
        async with http.post(front.url + "/v1/chat/completions",
                             json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "messages"
        async with http.get(front.url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == [MODEL]
        async with http.post(front.url + "/v1/completions", json={"model": MODEL, "prompt": "x",
                                                                   "max_tokens": 5, "temperature": 0}) as r:
            whole = await r.json()
            assert r.headers["X-Vigil-Node"] in front.servers and r.headers.getall("X-Vigil-Node") == [
                r.headers["X-Vigil-Node"]]
    assert len(whole["choices"][0]["token_ids"]) == 5 and whole["usage"]["completion_tokens"] == 5


async def test_a_stream_waiting_for_a_decoding_slot_hears_it_is_queued_at_once():
    """Busy is not hung: with every slot taken, a new stream gets its head and an SSE
    comment at once (a router's first-byte deadline is for dead servers), then its
    whole generation when a slot frees."""
    port = free_ports(1)[0]
    srv = ModelServer(NoEmbeddings(), "n1", generator=ReferenceLM(token_delay=0.02), slots=1)
    await srv.load()
    runner = await serve(srv.app, port)
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body_for(False, {"temperature": 0.0}, n=150)) as first:
                await first.content.readuntil(b"\n\n")  # the slot is taken
                async with http.post(url, json=body_for(False, {"temperature": 0.0}, n=20)) as second:
                    assert second.status == 200
                    head = await second.content.readuntil(b"\n\n")
                    assert head.startswith(b": queued"), head
                    assert not first.content.at_eof(), "heard while the first stream still holds the slot"
                    rest = (head + await second.content.read()).decode()
                await first.read()
            alone = await read_stream(http, url, body_for(False, {"temperature": 0.0}, n=20))
        ids = [i for e in rest.split("\n\n") if e.startswith("data: {")
               for ch in json.loads(e[6:])["choices"] for i in ch["token_ids"]]
        assert ids == alone["ids"] and rest.rstrip().endswith("data: [DONE]")
    finally:
        await runner.cleanup()
