"""Batch job records in the store, for the operator's side (`vigil job`):
submit, read, list, end (cancel; a node fails a job the same way), delete,
and read back results checked against the inputs (vigil.core.jobs has the
records and the exactly-once rules; vigil.agent.jobs does the work).

Errors: VigilError naming the job when it does not exist or a record is
not Vigil's; StoreError when etcd fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from vigil.core.jobs import (OPEN, JobRecordError, JobSpec, Progress, job_state, parse_chunk, parse_progress,
                             parse_spec, payload_id, result_from, sha256_of, shard_of)
from vigil.core.payloads import parse_payload_record
from vigil.core.records import BadRecord, decode_object, snippet
from vigil.errors import VigilError
from vigil.store.base import Expect, Store
from vigil.store.keys import Keys


@dataclass
class JobView:
    spec: JobSpec
    shards: list[Progress]  # one checkpoint per shard
    revisions: list[int]  # their mod revisions
    owners: dict[int, dict[str, Any]]  # shard -> its owner record, while a node holds it

    @property
    def state(self) -> str:
        return job_state(self.shards)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.shards)

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        reasons = [p.reason for p in self.shards if p.reason]
        return {"id": s.id, "model": s.model, "state": self.state, "total": s.total, "done": self.done,
                "percent": round(100.0 * self.done / s.total, 1), "chunks": s.chunks, "chunk_size": s.chunk_size,
                "claims": sum(p.claims for p in self.shards),
                "nodes": sorted({str(o.get("node", "?")) for o in self.owners.values()}),
                "submitted": s.submitted, "by": s.by, "updated": max(p.updated for p in self.shards) or None,
                "reason": reasons[0] if reasons else None,
                "shards": [{"shard": i, "state": p.state, "next_chunk": p.next, "end_chunk": p.end, "done": p.done,
                            "claims": p.claims, "node": self.owners.get(i, {}).get("node"),
                            "last_node": p.node or None} for i, p in enumerate(self.shards)]}


async def submit(store: Store, keys: Keys, spec: JobSpec, chunks: list[list[str]]) -> None:
    """Reserve the id (the spec, created only where absent), write the inputs, then
    every shard's queued checkpoint in one transaction: nodes claim a job only once
    all its checkpoints exist, so they never see it half-written. VigilError if
    the id is taken; a submit that fails half-way leaves a job that `delete` removes."""
    ok, _ = await store.txn([Expect(keys.job_spec(spec.id), create_revision=0)],
                            [(keys.job_spec(spec.id), spec.record(), 0)])
    if not ok:
        raise VigilError(f"job {spec.id} exists: choose another --id, or `vigil job delete {spec.id}`")
    for prefix in (keys.job_inputs(spec.id), keys.job_results(spec.id), keys.job_progresses(spec.id)):
        await store.delete_prefix(prefix)  # left by an earlier job of this id that was not deleted whole
    for k, chunk in enumerate(chunks):
        await store.put(keys.job_input(spec.id, k), json.dumps(chunk, ensure_ascii=False))
    await store.txn([], [(keys.job_progress(spec.id, i), p.record(), 0) for i, p in enumerate(spec.checkpoints())])


async def read_job(store: Store, keys: Keys, job_id: str) -> JobView:
    kv = await store.get(keys.job_spec(job_id))
    if kv is None:
        raise VigilError(f"no job {job_id!r} in cluster {keys.cluster} (see `vigil job list`)")
    try:
        spec = parse_spec(kv.value, kv.key)
        found = {kv.key: kv for kv in (await store.range(keys.job_progresses(job_id)))[0]}
        shards, revisions = [], []
        for i in range(spec.shards):
            pkv = found.get(keys.job_progress(job_id, i))
            if pkv is None:
                raise JobRecordError(f"{keys.job_progress(job_id, i)}: the checkpoint of shard {i} is missing")
            shards.append(parse_progress(pkv.value, pkv.key, spec, i))
            revisions.append(pkv.mod_revision)
    except JobRecordError as e:
        raise VigilError(f"job {job_id}: {e}") from None
    prefix = keys.payload(payload_id(job_id))
    owners = {}
    for okv in (await store.range(prefix))[0]:
        shard = shard_of(okv.key[len(prefix):])
        if shard is not None:
            owners[shard] = owner_of(okv.value)
    return JobView(spec, shards, revisions, owners)


def owner_of(raw: str, key: str = "owner") -> dict[str, Any]:
    """An owner record (a payload record, vigil.core.payloads) as a dict, whatever
    is stored there: {"node": "?", "corrupt": ...} for one no agent wrote."""
    if isinstance(parse_payload_record(key, raw), BadRecord):
        return {"node": "?", "corrupt": snippet(str(raw), 200)}
    return decode_object(key, raw)  # checked just above: a bounded object, extra fields ("total") kept


async def list_jobs(store: Store, keys: Keys) -> list[dict[str, Any]]:
    """Every job, oldest first; a record that is not Vigil's is listed as such."""
    out = []
    for kv in (await store.range(keys.job_specs))[0]:
        job_id = kv.key[len(keys.job_specs):]
        try:
            out.append((await read_job(store, keys, job_id)).to_json())
        except VigilError as e:
            out.append({"id": job_id, "state": "unreadable", "reason": str(e)})
    return sorted(out, key=lambda j: (j.get("submitted", 0), j["id"]))


async def end_job(store: Store, keys: Keys, job_id: str, state: str, reason: str, now: float) -> str:
    """End every open shard of the job (`cancelled` or `failed`, with `reason`); each
    owner stops at its next commit. Returns the job's state after."""
    while True:
        view = await read_job(store, keys, job_id)
        open_shards = [i for i, p in enumerate(view.shards) if p.state in OPEN]
        if not open_shards:
            return view.state
        ok, _ = await store.txn([Expect(keys.job_progress(job_id, i), mod_revision=view.revisions[i])
                                 for i in open_shards],
                                [(keys.job_progress(job_id, i), view.shards[i].ended(state, reason, now).record(), 0)
                                 for i in open_shards])
        if ok:
            return state


async def delete(store: Store, keys: Keys, job_id: str) -> int:
    """Remove every record of the job (an open job must be cancelled first). Returns keys deleted."""
    try:
        view: JobView | None = await read_job(store, keys, job_id)
    except VigilError:
        view = None  # a broken or half-submitted job is deleted like any other
    if view and view.state in OPEN:
        raise VigilError(f"job {job_id} is still open: `vigil job cancel {job_id}` first")
    n = int(await store.delete(keys.job_spec(job_id)))
    for prefix in (keys.job_progresses(job_id), keys.job_inputs(job_id), keys.job_results(job_id)):
        n += await store.delete_prefix(prefix)
    return n


@dataclass
class ChunkResult:
    chunk: int
    first: int  # the index of its first input in the job
    inputs: list[str]
    vectors: list[str]  # base64 float32, one per input
    node: str  # who committed it, under which claim
    claim: int


async def results(store: Store, keys: Keys, spec: JobSpec, upto: int) -> AsyncIterator[ChunkResult]:
    """The committed chunks 0..upto-1, each checked against its input chunk:
    VigilError names a chunk whose result is missing or does not match."""
    for k in range(upto):
        ikv, rkv = await store.get(keys.job_input(spec.id, k)), await store.get(keys.job_result(spec.id, k))
        if ikv is None or rkv is None:
            raise VigilError(f"job {spec.id}: chunk {k} has no {'input' if ikv is None else 'result'} record")
        try:
            inputs = parse_chunk(ikv.value, ikv.key, spec, k)
            r = result_from(rkv.value, rkv.key)
        except JobRecordError as e:
            raise VigilError(f"job {spec.id}: chunk {k}: {e}") from None
        if r.chunk != k or r.inputs_sha256 != sha256_of(inputs) or len(r.vectors) != len(inputs):
            raise VigilError(f"job {spec.id}: the result of chunk {k} does not match its inputs")
        yield ChunkResult(k, k * spec.chunk_size, inputs, r.vectors, r.node, r.claim)
