"""Issue 22 #1: batch job records that are not Vigil's, in-process on the
in-memory store. A free node still claims the job's real shard (its shard
numbers are read from key tails that may hold any text, "²" included, for
which str.isdigit() holds and int() raises), and `vigil job` reads the job
and its results past hostile owner and result records."""

from __future__ import annotations

import json

from vigil.agent.jobs import JobRunner
from vigil.clock import SystemClock
from vigil.core.jobs import JobSpec, chunked, payload_id, sha256_of, shard_of
from vigil.errors import VigilError
from vigil.store import jobs
from vigil.store.keys import Keys
from vigil.testing import MemoryStore

K = Keys("j")
HUGE = "1" + "0" * 400


def test_a_shard_number_is_ascii_digits_only():
    assert [shard_of(t) for t in ("0", "007", "123456")] == [0, 7, 123456]
    assert [shard_of(t) for t in ("", "²", "٣", "-1", "1e3", " 1", "1234567", "9" * 5000)] == [None] * 8


async def test_a_free_node_claims_past_hostile_job_records():
    store = MemoryStore()
    inputs = [f"input {i}" for i in range(6)]
    spec = JobSpec("j1", "m", 6, 3, 2, 1, 1.0, "test", sha256_of(inputs))
    await jobs.submit(store, K, spec, chunked(inputs, 3))
    for key, value in [(K.job_progresses("j1") + "²", json.dumps({"state": "queued"})),
                       (K.payload(payload_id("j1") + "²"), "{}"),
                       (K.job_progress("j1", 5), '{"updated": %s}' % HUGE),
                       (K.job_spec("zz"), '{"submitted": %s}' % HUGE),
                       (K.job_spec("deep"), "[" * 100_000),
                       (K.payload(payload_id("j1", 7)), '{"node": "n2", "started": NaN}')]:
        await store.put(key, value)
    lease = (await store.grant(10)).id
    runner = JobRunner(store, K, "n1", "http://127.0.0.1:1", SystemClock(), lambda: lease, lambda: True,
                       lambda *a, **kw: None)
    claim = await runner.claim(lease)
    assert claim is not None and (claim.spec.id, claim.shard) == ("j1", 0)
    view = await jobs.read_job(store, K, "j1")
    assert view.owners[0]["node"] == "n1" and view.owners[7] == {"node": "?", "corrupt": view.owners[7]["corrupt"]}
    listed = {j["id"]: j["state"] for j in await jobs.list_jobs(store, K)}
    assert listed == {"j1": "running", "zz": "unreadable", "deep": "unreadable"}


async def test_results_name_a_hostile_result_record():
    store = MemoryStore()
    inputs = ["a", "b"]
    spec = JobSpec("j1", "m", 2, 2, 1, 1, 1.0, "test", sha256_of(inputs))
    await jobs.submit(store, K, spec, chunked(inputs, 2))
    for bad in ('{"chunk": 0, "vectors": ["x", "y"], "at": %s}' % HUGE, "[" * 100_000,
                json.dumps({"chunk": 0, "inputs_sha256": sha256_of(inputs), "vectors": ["x", 1]})):
        await store.put(K.job_result("j1", 0), bad)
        try:
            [r async for r in jobs.results(store, K, spec, 1)]
        except VigilError as e:
            assert "chunk 0" in str(e)
        else:
            raise AssertionError(f"a result record no node wrote was read: {bad[:40]}")
