"""Every JSON endpoint of the model server (vigil.serve) answers a hostile body
with a 400 that names the problem, never a 500 of a crashed handler (which
the router would also count against the node): not UTF-8, not JSON, JSON
nested past the parser's recursion (a RecursionError, not a ValueError), the
wrong shape, text holding a lone surrogate (valid JSON, no valid Unicode). The server answers good requests after."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from vigil.procs import free_ports
from vigil.serve.generate import ReferenceLM
from vigil.serve.model import Embeddings
from vigil.serve.server import ModelServer

DEEP = 200_000  # past CPython's recursion limit in json.loads, under the server's body limit

HOSTILE = [
    b"\xff\xfe not utf-8",
    b"{not json",
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b"",
    b"null",
    b"[1, 2]",
]


class Vectors:
    """A stand-in embedding engine: one small vector per text."""

    serves = True

    def load(self) -> None:
        pass

    def embed(self, texts: list[str]) -> Embeddings:
        return Embeddings([[float(len(t)), 0.0] for t in texts], len(texts))


@pytest.fixture
async def server():
    srv = ModelServer(Vectors(), "n1", fault_injection=True, generator=ReferenceLM(), slots=1)
    await srv.load()
    runner = web.AppRunner(srv.app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# JSON that parses into text no encoder takes: a lone surrogate, per endpoint's text field
SURROGATE = {"/v1/embeddings": [b'{"input": "\\ud800"}', b'{"input": ["ok", "a\\udfffb"]}'],
             "/v1/completions": [b'{"prompt": "\\ud800", "max_tokens": 2}'],
             "/v1/chat/completions": [b'{"messages": [{"role": "user", "content": "x\\udc00"}]}'],
             "/_vigil/faults": []}


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/completions", "/v1/chat/completions", "/_vigil/faults"])
async def test_a_hostile_body_is_a_400_naming_the_problem(server, path):
    async with aiohttp.ClientSession() as http:
        for body in HOSTILE + SURROGATE[path]:
            async with http.post(server + path, data=body, headers={"Content-Type": "application/json"}) as r:
                doc = await r.json()
                assert r.status == 400, (path, body[:20], r.status, doc)
                assert doc["error"]["message"], doc
        good = {"/v1/embeddings": {"input": "hello"}, "/v1/completions": {"prompt": "hi", "max_tokens": 2},
                "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                "/_vigil/faults": {"slowdown": 1.0}}[path]
        async with http.post(server + path, json=good) as r:
            assert r.status == 200, await r.text()
