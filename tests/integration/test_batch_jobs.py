"""Batch jobs, the node's side (vigil.agent.jobs): two runners share a job
through the store, each with its own lease, embedding through a real HTTP
server (a deterministic stand-in for the model: a vector derived from each
input, so every result can be checked). The store is the in-memory one,
held to etcd by the conformance suite; tests/integration/test_batch_job_lab.py
runs the same against real etcd, agents and MiniLM servers killed with SIGKILL.

Covered: a job moves to another node when its owner's lease ends and every
input is committed exactly once; an owner paused past its lease commits
nothing after it; a busy server (429) is waited for, not left; a refused
input fails the job, naming its chunk; a cancel stops the owner; records
that are not Vigil's are skipped, not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct

import pytest
from aiohttp import web

from vigil.agent.jobs import JobRunner, _too_large
from vigil.clock import SystemClock
from vigil.errors import StoreError, StoreUnavailable
from vigil.core.jobs import JobSpec, chunked, payload_id, sha256_of
from vigil.procs import free_ports
from vigil.store import jobs
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys
from vigil.store.session import Session
from vigil.testing import MemoryStore
from vigil.testing.wait import wait_until

KEYS = Keys("j")


def vector(text: str) -> str:
    d = hashlib.sha256(text.encode()).digest()
    return base64.b64encode(struct.pack("<4f", *(b / 255 for b in d[:4]))).decode()


class Embedder:
    """An embeddings endpoint: `busy` answers 429 that many times, `allow(n)` lets n
    more requests through and parks the rest (a node "paused" mid-chunk; None: all),
    `refuse` answers 400 for an input with that text."""

    def __init__(self):
        self.busy, self.refuse, self.served = 0, None, 0
        self.limit: int | None = None
        self.answered = 0
        self.parked = 0
        self.more = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/embeddings", self.embeddings)

    def allow(self, n: int | None) -> None:
        self.limit = None if n is None else self.answered + n
        self.more.set()

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        while self.limit is not None and self.answered >= self.limit:
            self.parked += 1
            self.more.clear()
            await self.more.wait()
            self.parked -= 1
        self.answered += 1
        if self.busy:
            self.busy -= 1
            return web.json_response({"error": {"message": "busy"}}, status=429)
        if self.refuse in body["input"]:
            return web.json_response({"error": {"message": "input too long for the model"}}, status=400)
        self.served += len(body["input"])
        return web.json_response({"data": [{"index": i, "embedding": vector(t)}
                                           for i, t in enumerate(body["input"])]})


class Node:
    def __init__(self, name: str, store: MemoryStore, url: str):
        self.name, self.lease, self.ready, self.events = name, 0, True, []
        self.runner = JobRunner(store, KEYS, name, url, SystemClock(), lambda: self.lease, lambda: self.ready,
                                lambda kind, cause, **d: self.events.append((kind, cause)))
        self.task: asyncio.Task | None = None

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@pytest.fixture
async def env():
    async for e in serving(MemoryStore()):
        yield e


async def serving(store: MemoryStore):
    store.start()
    embedder = Embedder()
    runner = web.AppRunner(embedder.app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    nodes = [Node(n, store, f"http://127.0.0.1:{port}") for n in ("a", "b")]
    yield store, embedder, nodes
    for n in nodes:
        if n.task:
            n.task.cancel()
    await asyncio.gather(*(n.task for n in nodes if n.task), return_exceptions=True)
    await runner.cleanup()
    await store.close()


async def start(store: MemoryStore, node: Node) -> None:
    node.lease = (await store.grant(10)).id
    node.task = asyncio.get_running_loop().create_task(node.runner.run())


async def submit(store: MemoryStore, n: int, chunk: int, job: str = "j1",
                 shards: int = 1) -> tuple[JobSpec, list[str]]:
    inputs = [f"input {i}: {'x' * (i % 7)}" for i in range(n)]
    chunks = chunked(inputs, chunk)
    spec = JobSpec(job, "m", n, chunk, len(chunks), shards, 1.0, "test", sha256_of(inputs))
    await jobs.submit(store, KEYS, spec, chunks)
    return spec, inputs


async def progress(store: MemoryStore, job: str = "j1") -> dict:
    return (await jobs.read_job(store, KEYS, job)).to_json()


async def collect(store: MemoryStore, spec: JobSpec) -> list[tuple[int, str, str, str]]:
    """Every committed input, in order; AssertionError if a chunk's result was written more
    than once (the last value alone would hide a second commit: each put bumps `version`)."""
    twice = [k for k in range(spec.chunks) if (await store.get(KEYS.job_result(spec.id, k))).version != 1]
    assert not twice, f"chunks committed more than once: {twice}"
    return [(c.first + i, text, vec, c.node) async for c in jobs.results(store, KEYS, spec, spec.chunks)
            for i, (text, vec) in enumerate(zip(c.inputs, c.vectors))]


async def in_fourth_chunk(store: MemoryStore, embedder: Embedder, a: Node, n: int) -> JobSpec:
    """A job of `n` inputs in chunks of 20, its first shard claimed by `a` and `a`'s 4th
    chunk under way, held there (`embedder.allow` lets it go)."""
    spec, _ = await submit(store, n, 20)
    embedder.allow(3)
    await start(store, a)
    await wait_until(lambda: a.runner.current and a.runner.current.progress.next == 3 and embedder.parked, 30,
                     "a in its 4th chunk")
    return spec


def embedded_at_most_once_per_claim(embedder: Embedder, spec: JobSpec, claims: int) -> None:
    """Each claim re-embeds at most the one chunk it had in flight (A1: re-embedding is measured)."""
    assert spec.total <= embedder.served <= spec.total + spec.chunk_size * claims, (embedder.served, claims)


async def test_a_job_moves_when_its_owner_dies_and_every_input_is_committed_once(env):
    store, embedder, (a, b) = env
    spec, inputs = await submit(store, 2000, 20)
    await start(store, a)
    owner_key = KEYS.payload(payload_id("j1", 0))
    embedder.allow(10)  # a commits 10 chunks, then its next one is in flight and stays so
    await wait_until(lambda: a.runner.current and a.runner.current.progress.done == 200 and embedder.parked, 30,
                     "a to commit 200 inputs")
    owner = json.loads(store._kv[owner_key].value)
    assert (owner["node"], owner["kind"], owner["total"]) == ("a", "job", 2000) and owner["progress"] >= 0
    assert store._kv[owner_key].lease == a.lease, "the owner record lives under the owner's lease"
    await start(store, b)
    await store.revoke(a.lease)  # a dies
    a.task.cancel()
    embedder.allow(None)
    done_before = (await progress(store))["done"]
    assert done_before == 200
    await wait_until(lambda: "job_done" in b.kinds(), 60, "b to finish the job")
    p = await progress(store)
    assert (p["state"], p["done"], p["shards"][0]["next_chunk"], p["claims"]) == ("done", 2000, 100, 2)
    got = await collect(store, spec)
    assert [g[0] for g in got] == list(range(2000)), "every input once, in order"
    embedded_at_most_once_per_claim(embedder, spec, 2)
    assert all(text == inputs[i] and vec == vector(text) for i, text, vec, _ in got)
    assert {node for *_, node in got} == {"a", "b"}
    claimed = [c for k, c in b.events if k == "job_claimed"][0]
    assert f"resuming at chunk {done_before // 20}" in claimed, claimed
    assert owner_key not in store._kv, "the owner record goes when the job is done"


async def test_the_shards_of_a_job_spread_over_the_nodes_and_move_when_one_dies(env):
    store, embedder, (a, b) = env
    spec, inputs = await submit(store, 3000, 20, shards=3)
    embedder.allow(0)
    await start(store, a)
    await start(store, b)
    await wait_until(lambda: a.runner.current and b.runner.current and embedder.parked == 2, 30,
                     "both nodes at work on a shard each")
    assert a.runner.current.shard != b.runner.current.shard
    doc = await progress(store)
    assert doc["state"] == "running" and doc["nodes"] == ["a", "b"]
    await store.revoke(a.lease)  # a dies holding its shard
    a.task.cancel()
    embedder.allow(None)
    await wait_until(lambda: "job_done" in b.kinds(), 60, "b to finish every shard")
    doc = await progress(store)
    assert (doc["state"], doc["done"], doc["nodes"]) == ("done", 3000, [])
    assert [s["state"] for s in doc["shards"]] == ["done"] * 3 and doc["claims"] == 4, doc["shards"]
    got = await collect(store, spec)
    assert [g[0] for g in got] == list(range(3000)), "every input once, in order"
    embedded_at_most_once_per_claim(embedder, spec, 4)
    assert all(text == inputs[i] and vec == vector(text) for i, text, vec, _ in got)
    assert b.kinds().count("job_shard_done") == 2 and b.kinds()[-1] == "job_done"


async def test_an_owner_paused_past_its_lease_commits_nothing_after_it(env):
    store, embedder, (a, b) = env
    spec = await in_fourth_chunk(store, embedder, a, 400)  # and stays so: a is "paused"
    at = 3
    await store.revoke(a.lease)  # its lease ends while it is paused
    await start(store, b)
    await wait_until(lambda: b.runner.current is not None and embedder.parked == 2, 10, "b to claim the job")
    embedder.allow(None)  # both run again
    await wait_until(lambda: "job_lost" in a.kinds(), 30, "a to learn it lost the claim")
    await wait_until(lambda: "job_done" in b.kinds(), 60, "b to finish")
    got = await collect(store, spec)
    assert [g[0] for g in got] == list(range(400))
    embedded_at_most_once_per_claim(embedder, spec, (await progress(store))["claims"])
    assert all(node == "a" for i, *_, node in got if i < at * 20)
    assert all(node == "b" for i, *_, node in got if i >= at * 20), "nothing of a's after its lease ended"
    lost = [c for k, c in a.events if k == "job_lost"][0]
    assert "claim was lost" in lost and "held by b" in lost


class Decisions:
    """What JobRunner.follow hooks into: the agent's decision loop (vigil.agent.reconciler)."""

    def __init__(self):
        self.suspected: frozenset[str] = frozenset()
        self.convicted: frozenset[str] = frozenset()
        self.on_suspicion: list = []
        self.watch = type("Watch", (), {"on_payload_gone": None})()

    def suspect(self, *names: str) -> None:
        self.suspected = frozenset(names)
        for hook in self.on_suspicion:
            hook()

    def convict(self, *names: str) -> None:
        self.suspected = self.convicted = frozenset(names)
        for hook in self.on_suspicion:
            hook()


async def test_a_convicted_owners_shard_is_taken_before_its_lease_expires(env):
    """The cluster convicts a (paused mid-chunk, its lease still live): idle b takes
    the shard at once, deleting a's owner record; a, running again, commits nothing
    (its claim is gone), and every input is committed once. A suspicion short of a
    conviction takes nothing."""
    store, embedder, (a, b) = env
    spec = await in_fourth_chunk(store, embedder, a, 400)
    decisions = Decisions()
    b.runner.follow(decisions)
    b.lease = (await store.grant(10)).id
    assert await b.runner.claim(b.lease) is None, "a's claim holds while a is not convicted"
    b.task = asyncio.get_running_loop().create_task(b.runner.run())
    decisions.convict("a")
    await wait_until(lambda: b.runner.current is not None, 10, "b to take a's shard on a's conviction")
    assert "job_taken_over" in b.kinds() and (await store.get(KEYS.payload(payload_id("j1", 0)))).lease == b.lease
    assert (await store.time_to_live(a.lease)) > 0, "taken while a's lease still lived"
    embedder.allow(None)
    await wait_until(lambda: "job_lost" in a.kinds(), 30, "a to learn it lost the claim")
    await wait_until(lambda: "job_done" in b.kinds(), 60, "b to finish")
    got = await collect(store, spec)
    assert [g[0] for g in got] == list(range(400))
    assert all(node == "b" for i, *_, node in got if i >= 3 * 20), "nothing of a's after its conviction"


async def test_a_suspected_owners_lease_is_timed_and_its_shard_taken_when_the_lease_runs_out():
    """b suspects a but no majority convicts it (a lone survivor): b takes
    nothing while a's lease is renewed, but times the lease (it reads its time
    left: vigil.agent.lease_expiry), stops when a is heard again, and once a's
    lease has run out unrenewed revokes it (the store's lease scan never comes
    here: only b's revoke frees the shard) and takes the shard."""
    async for env in serving(MemoryStore(scan=float("inf"))):
        await suspected_owner(*env)


async def suspected_owner(store: MemoryStore, embedder: Embedder, nodes: list[Node]) -> None:
    a, b = nodes
    spec, _ = await submit(store, 400, 20)
    embedder.allow(3)
    renewing = Session(store, SystemClock(), 2, 0.5)  # a's session, renewed every 0.5 s
    a.lease = (await renewing.open()).id
    a.task = asyncio.get_running_loop().create_task(a.runner.run())
    await wait_until(lambda: a.runner.current and a.runner.current.progress.next == 3 and embedder.parked, 30,
                     "a in its 4th chunk")
    reads = count_calls(store, "lease_left")
    decisions = Decisions()
    b.runner.follow(decisions)
    b.lease = (await store.grant(10)).id
    b.task = asyncio.get_running_loop().create_task(b.runner.run())
    decisions.suspect("a")
    await wait_until(lambda: reads[0] >= 60, 10, "b to read a's time left through a renewal or more")
    assert b.runner.current is None and "job_claimed" not in b.kinds(), "a live lease is not taken"
    decisions.suspect()
    await wait_until(lambda: not b.runner.reaper.watching, 10, "b to stop timing a's lease once a is heard")
    await renewing.close(revoke=False)  # a dies: its lease is no longer renewed
    decisions.suspect("a")
    await wait_until(lambda: b.runner.current is not None, 10, "b to take a's shard when a's lease ran out")
    assert await store.time_to_live(a.lease) == -1 and "lease_expired" in b.kinds()
    embedder.allow(None)
    await wait_until(lambda: "job_done" in b.kinds(), 60, "b to finish")
    assert [g[0] for g in await collect(store, spec)] == list(range(400))


def count_calls(obj: object, name: str) -> list[int]:
    """Count calls of obj.name (a coroutine method) in the list returned."""
    calls, real = [0], getattr(obj, name)

    async def counted(*args):
        calls[0] += 1
        return await real(*args)
    setattr(obj, name, counted)
    return calls


async def test_etcd_away_mid_job_keeps_the_claim_and_work_goes_on_from_the_checkpoint(env):
    store, embedder, (a, _) = env
    spec = await in_fourth_chunk(store, embedder, a, 600)
    store.available = False
    embedder.allow(None)
    await wait_until(lambda: store.refused >= 3, 30, "a's commit and re-reads refused while etcd is away")
    store.available = True
    await wait_until(lambda: "job_done" in a.kinds(), 60, "the job done after etcd came back")
    assert a.kinds() == ["job_claimed", "job_done"] and (await progress(store))["claims"] == 1
    assert [g[0] for g in await collect(store, spec)] == list(range(600)), "every input once"
    embedded_at_most_once_per_claim(embedder, spec, 1)


async def test_a_busy_server_is_waited_for_and_a_refused_input_fails_the_job(env):
    store, embedder, (a, _) = env
    embedder.busy = 3
    await submit(store, 100, 10)
    await start(store, a)
    await wait_until(lambda: "job_done" in a.kinds(), 60, "the job done despite 3 busy answers")
    assert a.kinds() == ["job_claimed", "job_done"], "busy is waited out, never a release"
    embedder.refuse = "input 57: x"
    spec, _ = await submit(store, 100, 10, job="j2")
    await wait_until(lambda: "job_failed" in a.kinds(), 30, "the job failed")
    p = await progress(store, "j2")
    assert p["state"] == "failed" and "refused chunk 5" in p["reason"] and "too long" in p["reason"]
    assert p["done"] == 50, "the chunks before it stay committed"
    assert KEYS.payload(payload_id("j2", 0)) not in store._kv


async def test_cancel_stops_the_owner_and_delete_removes_the_job(env):
    store, embedder, (a, _) = env
    spec, _ = await submit(store, 2000, 10)
    embedder.allow(2)
    await start(store, a)
    await wait_until(lambda: a.runner.current and a.runner.current.progress.next == 2 and embedder.parked, 30,
                     "a at work")
    assert await jobs.end_job(store, KEYS, "j1", "cancelled", "by operator", 2.0) == "cancelled"
    embedder.allow(None)
    await wait_until(lambda: "job_released" in a.kinds(), 30, "a to stop")
    assert KEYS.payload(payload_id("j1", 0)) not in store._kv
    with pytest.raises(Exception, match="exists"):
        await submit(store, 10, 10)
    assert await jobs.delete(store, KEYS, "j1") > spec.chunks
    assert not any(k.startswith(KEYS.jobs) for k in store._kv)


async def test_records_that_are_not_vigils_are_skipped(env):
    store, embedder, (a, _) = env
    await store.put(KEYS.job_spec("bad"), "{not json")
    await store.put(KEYS.job_progress("bad", 0), json.dumps({"state": "queued", "next": 0}))
    await store.put(KEYS.job_spec("neg"), json.dumps({"id": "neg", "model": "m", "total": -5, "chunk_size": 1,
                                                      "chunks": 1, "shards": 1, "submitted": 0,
                                                      "inputs_sha256": ""}))
    await store.put(KEYS.job_progress("neg", 0), json.dumps({"state": "queued", "next": 0, "end": 1, "done": 0,
                                                             "claims": 0, "updated": 0}))
    half = JobSpec("half", "m", 10, 10, 1, 1, 0.5, "test", "sha")  # a submit that died before its checkpoints
    await store.put(KEYS.job_spec("half"), half.record())
    spec, _ = await submit(store, 30, 10)
    await store.put(KEYS.job_input("j1", 1), json.dumps(["only one"]))  # a tampered chunk
    await start(store, a)
    await wait_until(lambda: "job_failed" in a.kinds(), 30, "the tampered job failed")
    p = await progress(store)
    assert p["state"] == "failed" and "expected a list of 10 strings" in p["reason"] and p["done"] == 10
    listed = {j["id"]: j["state"] for j in await jobs.list_jobs(store, KEYS)}
    assert listed == {"bad": "unreadable", "neg": "unreadable", "half": "unreadable", "j1": "failed"}
    assert a.kinds() == ["job_claimed", "job_failed"], "nothing but the whole job was claimed"
    assert await jobs.delete(store, KEYS, "half") == 1


async def test_the_every_input_once_check_sees_a_chunk_committed_twice(env):
    """The checks above are held to a known violation: a second put of one chunk's result,
    with the same value, is seen (the last value alone would hide it)."""
    store, embedder, (a, _) = env
    spec, _ = await submit(store, 40, 20)
    await start(store, a)
    await wait_until(lambda: "job_done" in a.kinds(), 30, "the job done")
    assert len(await collect(store, spec)) == 40
    kv = await store.get(KEYS.job_result("j1", 1))
    await store.put(kv.key, kv.value)  # chunk 1 committed again, identically
    with pytest.raises(AssertionError, match=r"committed more than once: \[1\]"):
        await collect(store, spec)
    embedder.served += 40  # ... and embedded twice more under one claim
    with pytest.raises(AssertionError):
        embedded_at_most_once_per_claim(embedder, spec, 1)


class CreateAnswerLost(MemoryStore):
    """etcd's client retrying an owner create whose answer was lost: the first create of an
    owner record applies and then answers like the retry would, "already there"."""

    def __init__(self):
        super().__init__()
        self.lost = 0

    async def create(self, key, value, lease=0):
        ok, kv = await super().create(key, value, lease)
        if ok and key.startswith(KEYS.payload("job:")) and not self.lost:
            self.lost += 1
            return False, kv
        return ok, kv


async def test_a_claim_whose_create_answer_was_lost_is_worked_on():
    async for store, embedder, (a, _) in serving(CreateAnswerLost()):
        spec, _ = await submit(store, 100, 20)
        await start(store, a)
        await wait_until(lambda: "job_done" in a.kinds(), 30, "a to work on the shard it created")
        assert store.lost == 1 and a.kinds() == ["job_claimed", "job_done"]
        assert [g[0] for g in await collect(store, spec)] == list(range(100))
        embedded_at_most_once_per_claim(embedder, spec, 1)


class RequestLimit(MemoryStore):
    """etcd's --max-request-bytes: a transaction whose puts exceed `limit` bytes is refused
    the way EtcdStore reports it (test_a_request_over_etcds_limit_is_refused_as_too_large)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.refused_large = limit, 0

    async def txn(self, expect, puts, deletes=()):
        if sum(len(k) + len(v) for k, v, _ in puts) > self.limit:
            self.refused_large += 1
            raise StoreError("etcd http://127.0.0.1:2379 refused the request: etcdserver: request is too large")
        return await super().txn(expect, puts, deletes)


async def test_a_result_too_large_for_etcd_fails_the_job_instead_of_embedding_forever():
    async for store, embedder, (a, _) in serving(RequestLimit(4000)):
        await submit(store, 100, 20, job="small")  # ~0.5 kB per result: fits
        await start(store, a)
        await wait_until(lambda: "job_done" in a.kinds(), 30, "the job with small results done")
        await submit(store, 500, 250, job="big")  # ~5.5 kB per result: over the limit
        await wait_until(lambda: "job_failed" in a.kinds(), 30, "the job with big results failed")
        p = await progress(store, "big")
        assert p["state"] == "failed" and p["done"] == 0, p
        assert "result of chunk 0" in p["reason"] and "smaller --chunk" in p["reason"], p["reason"]
        assert store.refused_large == 1 and embedder.served == 100 + 250, "chunk 0 was embedded once"
        assert KEYS.payload(payload_id("big", 0)) not in store._kv


async def test_a_request_over_etcds_limit_is_refused_as_too_large(etcd_cluster):
    """The message RequestLimit imitates is the one a real etcd gives (1.5 MiB by default)."""
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    try:
        for size in (1_700_000, 2_500_000):  # over etcd's limit; over its gRPC gateway's too
            with pytest.raises(StoreError) as e:
                await store.txn([], [("/vigil-test/too-large", "x" * size, 0)], [])
            assert _too_large(e.value) and not isinstance(e.value, StoreUnavailable), e.value
    finally:
        await store.close()
