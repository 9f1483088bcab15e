"""Streams survive the death of their node, with real processes: model
servers (`vigil serve-model --generate reference`, one process per node)
behind the router, each node SIGKILLed or SIGSTOPped mid-stream while other
streams run, read by the official `openai` client, by `curl -N` and by a
plain HTTP client. Every stream ends complete, exactly the uninterrupted
generation (computed here from the same model), with one [DONE].
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from vigil import procs
from vigil.router.config import parse_router_config
from vigil.router.proxy import Router
from vigil.serve.generate import ReferenceLM, Sampling, generation
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_for_value, wait_until

MODEL = ReferenceLM.model_id
TOKEN_DELAY = 0.02  # s per token: an 80-token stream lasts about 1.6 s
TOKENS = 80


def expected(prompt: str, temperature: float, seed: int = 0, n: int = TOKENS) -> tuple[str, list[int]]:
    """The uninterrupted generation, from the model itself."""
    model = ReferenceLM()
    return generation(model, model.encode(prompt), n, Sampling(temperature, 1.0, seed))


class Nodes:
    def __init__(self, root: Path, n: int):
        self.root, self.n = root, n
        self.ports = procs.free_ports(n)
        self.pids: dict[str, int] = {}
        self.store = MemoryStore()
        self.router: Router | None = None
        self.beats: HeartbeatSender | None = None
        self.url = ""

    def marker(self, name: str) -> str:
        return f"serve-model --port {self.ports[int(name[1:]) - 1]}"

    async def start(self) -> None:
        for i, port in enumerate(self.ports):
            name = f"n{i + 1}"
            p = procs.spawn([sys.executable, "-m", "vigil", "serve-model", "--port", str(port), "--node", name,
                             "--no-embed", "--generate", "reference", "--token-delay", str(TOKEN_DELAY)],
                            self.root / f"{name}.log")
            self.pids[name] = p.pid
        async with aiohttp.ClientSession() as http:
            for port in self.ports:
                await wait_for_value(lambda port=port: _ready(http, port), True, 30)
        self.store.start()
        for i, port in enumerate(self.ports):
            await self.store.put(Keys("s").member(f"n{i + 1}"), json.dumps(member_record(f"http://127.0.0.1:{port}")))
        router_port, hb_port = procs.free_ports(2)
        keys = shared_keys(*self.pids)  # key-ring members that heartbeat: the router routes to no other
        # 2 s of silence between tokens that come every 20 ms is a hung node
        cfg = parse_router_config({"cluster": "s", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                                   "listen": {"port": router_port}, "retry": {"idle_timeout": 2.0},
                                   "heartbeat": {"port": hb_port, **keys["ring"]}})
        self.router = Router(cfg, self.store)
        await self.router.start()
        await self.router.listen("127.0.0.1", router_port)
        self.beats = HeartbeatSender("s", keys, list(self.pids), ("127.0.0.1", hb_port)).start()
        self.url = f"http://127.0.0.1:{router_port}"
        await wait_until(lambda: len(self.router.table.eligible(0.0, frozenset())) == self.n, 5, "the backends")

    def signal(self, name: str, sig: int) -> None:
        assert procs.signal_pid(self.pids[name], sig, self.marker(name)), f"{name} was not running"

    async def stop(self) -> None:
        if self.beats:
            await self.beats.stop()
        if self.router:
            await self.router.stop()
        await self.store.close()
        for name, pid in self.pids.items():
            procs.signal_pid(pid, signal.SIGCONT, self.marker(name))
            procs.stop(pid, self.marker(name), grace=2.0)


async def _ready(http: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with http.get(f"http://127.0.0.1:{port}/v2/health/ready") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def nodes(tmp_path):
    made: list[Nodes] = []

    async def start(n: int) -> Nodes:
        made.append(Nodes(tmp_path, n))
        await made[-1].start()
        return made[-1]
    try:
        yield start
    finally:
        for x in made:
            await x.stop()


async def sse_stream(url: str, prompt: str, temperature: float, seed: int,
                     on_tokens: tuple[int, Any] | None = None) -> dict[str, Any]:
    """A plain client: text, ids, [DONE] count, the answering node; calls
    on_tokens[1](node) once on_tokens[0] tokens arrived."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": TOKENS, "temperature": temperature, "seed": seed,
            "stream": True}
    seen, buf = Seen(), b""
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/completions", json=body) as r:
        seen.node = r.headers["X-Vigil-Node"]
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if seen.take(event) and on_tokens and len(seen.ids) == on_tokens[0]:
                    on_tokens[1](seen.node)
    return vars(seen)


class Seen:
    """What a client got from the SSE events it read."""

    def __init__(self):
        self.text, self.ids, self.done, self.node = "", [], 0, ""

    def take(self, event: bytes) -> bool:
        """True when the event carried tokens."""
        if event == b"data: [DONE]":
            self.done += 1
        elif event.startswith(b"data: "):
            for ch in json.loads(event[6:])["choices"]:
                self.ids += ch["token_ids"]
                self.text += ch["text"]
            return True
        return False


def openai_stream(url: str, prompt: str, at: int, fault: Any) -> dict[str, Any]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                       stream=True)
    node = stream.response.headers["x-vigil-node"]
    text, ids = "", []
    for chunk in stream:
        for ch in chunk.choices:
            text += ch.text
            ids += (ch.model_extra or {}).get("token_ids", [])
        if len(ids) == at:
            fault(node)
    return {"text": text, "ids": ids, "node": node}


async def curl_stream(url: str, prompt: str, at: int, fault: Any) -> dict[str, Any]:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True})
    p = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-D", "-", "-H", "Content-Type: application/json", "-d", body, url + "/v1/completions",
        stdout=asyncio.subprocess.PIPE)
    assert p.stdout is not None
    seen = Seen()
    while line := await asyncio.wait_for(p.stdout.readline(), 30):
        line = line.strip()
        if line.lower().startswith(b"x-vigil-node:"):
            seen.node = line.split(b":", 1)[1].strip().decode()
        elif seen.take(line) and len(seen.ids) == at:
            fault(seen.node)
    assert await p.wait() == 0
    return vars(seen)


async def test_sigkill_of_the_serving_node_mid_stream_under_load(nodes):
    assert shutil.which("curl"), "curl is needed (apt-get install curl)"
    front = await nodes(3)
    killed: list[str] = []

    def kill(node: str) -> None:
        killed.append(node)
        front.signal(node, signal.SIGKILL)
    prompts = [f"stream {i}: when the leader fails," for i in range(4)]
    # round 1: the openai client's node dies after 15 tokens, four other streams running
    load = [asyncio.ensure_future(sse_stream(front.url, p, 0.8, i)) for i, p in enumerate(prompts)]
    got = await asyncio.to_thread(openai_stream, front.url, "the openai client streams", 15, kill)
    assert (got["text"], got["ids"]) == expected("the openai client streams", 0)
    for i, r in enumerate(await asyncio.gather(*load)):
        assert (r["text"], r["ids"]) == expected(prompts[i], 0.8, i) and r["done"] == 1
    # round 2: curl's node dies after 30 tokens
    load = [asyncio.ensure_future(sse_stream(front.url, p, 0.8, i)) for i, p in enumerate(prompts)]
    got = await curl_stream(front.url, "curl -N streams", 30, kill)
    assert (got["text"], got["ids"]) == expected("curl -N streams", 0) and got["done"] == 1
    for i, r in enumerate(await asyncio.gather(*load)):
        assert (r["text"], r["ids"]) == expected(prompts[i], 0.8, i) and r["done"] == 1
    assert len(set(killed)) == 2, killed
    assert front.router.metrics.stream_resumes.labels("resumed")._value.get() >= 2
    assert front.router.metrics.stream_resumes.labels("broken")._value.get() == 0


async def test_sigstop_of_the_serving_node_mid_stream_is_resumed_after_the_idle_deadline(nodes):
    front = await nodes(2)
    stopped: list[str] = []

    def stop(node: str) -> None:
        stopped.append(node)
        front.signal(node, signal.SIGSTOP)
    got = await sse_stream(front.url, "a node freezes", 0.7, 5, on_tokens=(20, stop))
    assert (got["text"], got["ids"]) == expected("a node freezes", 0.7, 5) and got["done"] == 1
    assert stopped == [got["node"]]
    assert front.router.metrics.stream_resumes.labels("resumed")._value.get() == 1
