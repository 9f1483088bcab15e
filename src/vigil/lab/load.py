"""A steady stream of real embedding requests through the router, recording
every request: when it started, how long it took, the status, which node
answered and how many attempts it took. Used by the demo, tests and benches.

The loop is bounded by `duration` (or `stop()`), sends at a fixed `rate`
with at most `concurrency` requests in flight, and never retries itself:
every failure the client would see is counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from vigil.clock import woken


@dataclass
class Sample:
    start: float  # Unix time
    latency: float
    status: int  # 0: no HTTP response at all
    node: str = ""
    attempts: int = 1
    error: str = ""


@dataclass
class LoadGenerator:
    url: str
    rate: float = 50.0
    concurrency: int = 64
    timeout: float = 30.0
    # The request body of request i: an embedding by default; a deployment without the
    # embedding model asks the reference generator (`serve-model --generate reference`).
    body: Callable[[int], dict] | None = None
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    def stop(self) -> None:
        if self._stop:
            self._stop.set()

    async def run(self, duration: float) -> list[Sample]:
        self._stop = asyncio.Event()
        sem = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
            i = 0
            nxt = loop.time()
            while loop.time() < end and not self._stop.is_set():
                await sem.acquire()
                t = loop.create_task(self._one(http, i, sem))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                i += 1
                nxt += 1.0 / self.rate
                delay = nxt - loop.time()
                if delay > 0:
                    await woken(self._stop, delay)
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.samples

    async def _one(self, http: aiohttp.ClientSession, i: int, sem: asyncio.Semaphore) -> None:
        t0, w0 = time.monotonic(), time.time()
        try:
            body = self.body(i) if self.body else {"input": f"request {i}: the quick brown fox",
                                                    "model": "all-MiniLM-L6-v2"}
            async with http.post(self.url, json=body) as r:
                await r.read()
                self.samples.append(Sample(w0, time.monotonic() - t0, r.status,
                                           r.headers.get("X-Vigil-Node", ""),
                                           int(r.headers.get("X-Vigil-Attempts", "1"))))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            self.samples.append(Sample(w0, time.monotonic() - t0, 0, error=f"{type(e).__name__}: {e}"))
        finally:
            sem.release()
