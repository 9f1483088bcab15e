"""A model server loads its models on a thread of its own at LOAD_NICE and
warms up and serves on its inference thread at its own priority
(vigil.serve.server.ModelServer.load): a restart takes the CPU its machine's
router, agent and other work leave over, and never runs inference slowed."""

from __future__ import annotations

import asyncio
import os
import threading

from vigil.serve.generate import ReferenceLM
from vigil.serve.model import Embeddings
from vigil.serve.server import LOAD_NICE, ModelServer


def niceness() -> tuple[str, int]:
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class Recorded:
    """An embedding engine and a generator that note where and how nice each step ran."""

    serves = True

    def __init__(self, seen: dict[str, tuple[str, int]]):
        self.seen = seen

    def load(self) -> None:
        self.seen["embedder load"] = niceness()

    def embed(self, texts: list[str]) -> Embeddings:
        self.seen["embedder warm-up"] = niceness()
        return Embeddings([[0.0] for _ in texts], len(texts))


class RecordedLM(ReferenceLM):
    def __init__(self, seen: dict[str, tuple[str, int]]):
        super().__init__()
        self.seen = seen

    def load(self) -> None:
        self.seen["generator load"] = niceness()

    def start(self, prompt, generated=()):
        self.seen["generator warm-up"] = niceness()
        return super().start(prompt, generated)


def test_models_load_at_load_nice_and_warm_up_on_the_inference_thread_at_the_servers_priority():
    seen: dict[str, tuple[str, int]] = {}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    server = ModelServer(Recorded(seen), "n1", generator=RecordedLM(seen))
    try:
        asyncio.run(server.load())
    finally:
        server.pool.shutdown()
    assert server.ready
    assert seen["embedder load"][1] == seen["generator load"][1] == min(19, own + LOAD_NICE)
    assert seen["embedder load"][0].startswith("load") and seen["generator load"][0].startswith("load")
    for step in ("embedder warm-up", "generator warm-up"):
        assert seen[step][0].startswith("inference") and seen[step][1] == own, (step, seen[step])
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the process's (main thread's) own stays
