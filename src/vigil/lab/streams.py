"""Long streamed generations through a lab's router while a fault happens
(the demo's first fault kills the leader node with one of them on it): what
each client received, and where its stream resumed.

`StreamWatch(router_url, model, n, tokens)`: `start()` opens `n` streams at
once (the router's least-outstanding choice spreads them over the nodes),
`wait_tokens(k)` returns once each has `k` tokens, `join()` their results:
node(s), tokens, one [DONE], the resume (from, to, at token, the gap the
client saw), and whether text and token ids equal the uninterrupted
generation (computed here from the same model).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from vigil import procs
from vigil.serve.generate import Sampling, generation


@dataclass
class StreamResult:
    prompt: str
    node: str = ""
    tokens: int = 0
    done: int = 0
    error: str = ""
    resumes: list[dict[str, Any]] = field(default_factory=list)  # {from, to, at_token, at, gap_ms}
    complete: bool = False
    text: str = ""
    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("text", "ids", "times"):
            d.pop(k)
        return d


class StreamWatch:
    def __init__(self, router_url: str, model: Any, n: int = 3, tokens: int = 400):
        self.url, self.model, self.tokens = router_url, model, tokens
        self.results = [StreamResult(f"stream {i}: what does a router do when a node dies mid-answer?")
                        for i in range(n)]
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_tokens(self, k: int, timeout: float) -> None:
        procs.wait_for(lambda: all(r.tokens >= k or r.error or r.done for r in self.results), timeout,
                       f"{len(self.results)} streams to reach {k} tokens each")

    def join(self, timeout: float) -> list[StreamResult]:
        self._thread.join(timeout)
        for r in self.results:
            text, ids = generation(self.model, self.model.encode(r.prompt), self.tokens, Sampling(0.0))
            r.complete = r.done == 1 and not r.error and (r.text, r.ids) == (text, ids)
        return self.results

    async def _all(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            await asyncio.gather(*(self._one(http, r) for r in self.results))

    async def _one(self, http: aiohttp.ClientSession, r: StreamResult) -> None:
        body = {"model": self.model.model_id, "prompt": r.prompt, "max_tokens": self.tokens, "temperature": 0,
                "stream": True}
        buf = b""
        try:
            async with http.post(self.url + "/v1/completions", json=body) as resp:
                r.node = resp.headers.get("X-Vigil-Node", "")
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        self._take(r, event)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            r.error = r.error or f"{type(e).__name__}: {e}"

    @staticmethod
    def _take(r: StreamResult, event: bytes) -> None:
        if event.startswith(b": vigil resumed "):  # ": vigil resumed n1->n2 at token 57 (why)"
            route = event.split()[3].decode()
            r.resumes.append({"from": route.split("->")[0], "to": route.split("->")[1], "at_token": r.tokens,
                              "at": time.time(), "gap_ms": None})
        elif event == b"data: [DONE]":
            r.done += 1
        elif event.startswith(b"data: "):
            chunk = json.loads(event[6:])
            if "error" in chunk:
                r.error = chunk["error"].get("message", "error event")
            for ch in chunk.get("choices", []):
                ids = ch.get("token_ids") or []
                if ids and r.resumes and r.resumes[-1]["gap_ms"] is None and r.times:
                    r.resumes[-1]["gap_ms"] = round((time.monotonic() - r.times[-1]) * 1000, 1)
                r.ids += ids
                r.tokens += len(ids)
                r.times += [time.monotonic()] * len(ids)
                r.text += ch.get("text") or ""
