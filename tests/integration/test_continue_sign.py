"""`vigil_continue` is the router's, never a client's (issue 22 B-L7,
vigil.router.continue_sign): the router refuses a client request carrying
it; a model server given the cluster's continuation key honours only
continuations the router signed with it; a continuation's id never names
other work; two generations under one id both run to the end. In-process:
a router on the in-memory store in front of three real model servers
running the reference language model (tests/integration/test_stream_resume.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp

from tests.integration.test_stream_resume import Front, body_for, front, read_stream  # noqa: F401 (front: a fixture)
from vigil.router import continue_sign
from vigil.serve.generate import ReferenceLM

KEY = bytes.fromhex("5e" * 32)


def url_of(front: Front, name: str) -> str:
    i = list(front.servers).index(name)
    return f"http://127.0.0.1:{front.runners[i].addresses[0][1]}"


def continued(n: int = 8, stream_id: str = "cmpl-" + "ab" * 12, ids: list[int] | None = None) -> dict:
    return {**body_for(False, {"temperature": 0}, n),
            "vigil_continue": {"token_ids": ids or [], "id": stream_id, "created": 1}}


def test_client_continue_sees_the_field_however_it_is_spelled():
    for body in (b'{"prompt": "x", "vigil_continue": {}}', b'{"prompt": "x", "vigil\\u005fcontinue": 1}'):
        why = continue_sign.client_continue("POST", "/v1/chat/completions", body)
        assert why and "'vigil_continue' is set only by a Vigil router" in why
    for method, path, body in (("POST", "/v1/completions", b'{"prompt": "vigil_continue"}'),
                               ("POST", "/v1/embeddings", b'{"vigil_continue": 1}'),
                               ("POST", "/v1/completions", b"\\u not json"), ("GET", "/v1/completions", b"")):
        assert continue_sign.client_continue(method, path, body) is None
    body = continued()
    continue_sign.sign(KEY, body)
    assert continue_sign.verify(KEY, json.loads(json.dumps(body))) is None, "survives the wire"
    assert "does not match" in continue_sign.verify(bytes(32), body)
    body["max_tokens"] += 1
    assert "does not match" in continue_sign.verify(KEY, body), "the MAC covers the whole request"


async def test_the_router_refuses_a_clients_vigil_continue(front):
    await front.start()
    async with aiohttp.ClientSession() as http:
        for path, body in (("/v1/completions", continued()),
                           ("/v1/chat/completions", {**body_for(True, {}, 4), "vigil_continue": None})):
            async with http.post(front.url + path, json=body) as r:
                doc = await r.json()
                assert r.status == 400 and doc["error"]["param"] == "vigil_continue", doc
                assert "is set only by a Vigil router" in doc["error"]["message"], doc
        escaped = json.dumps(continued()).replace("vigil_continue", "vigil\\u005fcontinue").encode()
        async with http.post(front.url + "/v1/completions", data=escaped,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
        plain = await read_stream(http, front.url + "/v1/completions", body_for(False, {"temperature": 0}, 6))
        assert plain["data"][-1] == "[DONE]" and len(plain["ids"]) == 6, "requests without it pass"


async def test_with_a_continue_key_a_server_honours_only_the_routers_signed_continuations(front, tmp_path):
    key_file = tmp_path / "continue.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    await front.start(continue_key_file=str(key_file))
    for srv in front.servers.values():
        srv.completions.continue_key = KEY
    async with aiohttp.ClientSession() as http:
        whole = await read_stream(http, front.url + "/v1/completions", body_for(False, {"temperature": 0}, 30))
        for srv in front.servers.values():
            srv.cut_streams_after = 7
        cut = await read_stream(http, front.url + "/v1/completions", body_for(False, {"temperature": 0}, 30))
        assert len(cut["comments"]) == 1 and "vigil resumed" in cut["comments"][0], cut["raw"][-300:]
        assert (cut["text"], cut["ids"]) == (whole["text"], whole["ids"]), "the signed continuation was honoured"
        direct = url_of(front, "n1") + "/v1/completions"
        unsigned = continued(ids=whole["ids"][:5])
        forged = continued(ids=whole["ids"][:5])
        forged["vigil_continue"]["mac"] = "00" * 32
        for body, words in ((unsigned, "no 'mac'"), (forged, "does not match")):
            async with http.post(direct, json=body) as r:
                doc = await r.json()
                assert r.status == 400 and doc["error"]["param"] == "vigil_continue" and words in \
                    doc["error"]["message"], doc
        good = continued(ids=whole["ids"][:5])
        continue_sign.sign(KEY, good)
        got = await read_stream(http, direct, good)
        assert got["ids"] == whole["ids"][5:13], "a signed continuation goes on from its ids"


async def test_a_continuation_id_never_names_other_work(front):
    await front.start()
    async with aiohttp.ClientSession() as http:
        for bad in ("job:j1:0", "cmpl-xyz", "x" * 40, 7):
            async with http.post(url_of(front, "n1") + "/v1/completions", json=continued(stream_id=bad)) as r:
                doc = await r.json()
                assert r.status == 400 and "must be the id of a stream" in doc["error"]["message"], (bad, doc)


async def test_two_generations_under_one_id_both_run_to_the_end(front):
    """completions.py:203 raised KeyError in the first once the second ended."""
    await front.start_with(lambda: ReferenceLM(token_delay=0.01), 8)
    url = url_of(front, "n1") + "/v1/completions"
    sid = "cmpl-" + secrets.token_hex(12)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=continued(120, sid)) as long:
            assert long.status == 200
            first = await long.content.readuntil(b"\n\n")
            assert first.startswith(b"data: ")
            async with http.get(url_of(front, "n1") + "/v2/load") as r:
                assert [p["id"] for p in (await r.json())["payloads"]] == [sid]
            short = await read_stream(http, url, continued(3, sid))
            assert short["data"][-1] == "[DONE]"
            rest = await asyncio.wait_for(long.content.read(), 30)
        assert rest.endswith(b"data: [DONE]\n\n"), rest[-200:]
    assert not front.servers["n1"].payloads, "both entries gone"
