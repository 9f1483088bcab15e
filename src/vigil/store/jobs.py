"""Batch job records in the store, for the operator's side (`vigil job`):
submit, read, list, cancel, delete, and read back results checked against
the inputs (vigil.core.jobs has the records and the exactly-once rules;
vigil.agent.jobs does the work).

Errors: VigilError naming the job when it does not exist or a record is
not Vigil's; StoreError when etcd fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from vigil.core.jobs import (OPEN, JobRecordError, JobSpec, Progress, parse_chunk, parse_progress,
                             parse_spec, payload_id, sha256_of)
from vigil.errors import VigilError
from vigil.store.base import Expect, Store
from vigil.store.keys import Keys


@dataclass
class JobView:
    spec: JobSpec
    progress: Progress
    owner: dict[str, Any] | None  # the payload record while a node holds the job

    def to_json(self) -> dict[str, Any]:
        s, p = self.spec, self.progress
        return {"id": s.id, "model": s.model, "state": p.state, "total": s.total, "done": p.done,
                "percent": round(100.0 * p.done / s.total, 1), "chunks": s.chunks, "next_chunk": p.next,
                "chunk_size": s.chunk_size, "claims": p.claims,
                "node": self.owner.get("node") if self.owner else None, "last_node": p.node or None,
                "submitted": s.submitted, "by": s.by, "updated": p.updated or None, "reason": p.reason or None}


async def submit(store: Store, keys: Keys, spec: JobSpec, chunks: list[list[str]]) -> None:
    """Write the inputs, then the spec and a queued checkpoint in one transaction
    (the job is visible to nodes only once whole). VigilError if the id is taken."""
    if await store.get(keys.job_spec(spec.id)) is not None:
        raise VigilError(f"job {spec.id} exists: choose another --id, or `vigil job delete {spec.id}`")
    await store.delete_prefix(keys.job_inputs(spec.id))  # a submit that failed half-way
    await store.delete_prefix(keys.job_results(spec.id))
    for k, chunk in enumerate(chunks):
        await store.put(keys.job_input(spec.id, k), json.dumps(chunk, ensure_ascii=False))
    ok, _ = await store.txn([Expect(keys.job_spec(spec.id), create_revision=0)],
                            [(keys.job_spec(spec.id), spec.record(), 0),
                             (keys.job_progress(spec.id), Progress().record(), 0)])
    if not ok:
        raise VigilError(f"job {spec.id} was submitted by someone else meanwhile")


async def read_job(store: Store, keys: Keys, job_id: str) -> JobView:
    kv = await store.get(keys.job_spec(job_id))
    if kv is None:
        raise VigilError(f"no job {job_id!r} in cluster {keys.cluster} (see `vigil job list`)")
    pkv = await store.get(keys.job_progress(job_id))
    okv = await store.get(keys.payload(payload_id(job_id)))
    try:
        spec = parse_spec(kv.value, kv.key)
        progress = parse_progress(pkv.value, pkv.key) if pkv else Progress("failed", reason="no checkpoint")
    except JobRecordError as e:
        raise VigilError(f"job {job_id}: {e}") from None
    return JobView(spec, progress, _owner(okv.value) if okv else None)


def _owner(raw: str) -> dict[str, Any]:
    try:
        d = json.loads(raw)
    except ValueError:
        return {"node": "?", "corrupt": raw[:200]}
    return d if isinstance(d, dict) else {"node": "?", "corrupt": raw[:200]}


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


async def cancel(store: Store, keys: Keys, job_id: str, by: str, now: float) -> Progress:
    """Mark an open job cancelled (its owner stops at its next commit). Returns the checkpoint."""
    while True:
        view = await read_job(store, keys, job_id)
        if view.progress.state not in OPEN:
            return view.progress
        pkv = await store.get(keys.job_progress(job_id))
        ended = view.progress.ended("cancelled", f"cancelled by {by}", now)
        ok, _ = await store.txn([Expect(pkv.key, mod_revision=pkv.mod_revision)], [(pkv.key, ended.record(), 0)])
        if ok:
            return ended


async def delete(store: Store, keys: Keys, job_id: str) -> int:
    """Remove every record of the job (an open job must be cancelled first). Returns keys deleted."""
    kv = await store.get(keys.job_progress(job_id))
    if kv is not None:
        try:
            if parse_progress(kv.value, kv.key).state in OPEN:
                raise VigilError(f"job {job_id} is still open: `vigil job cancel {job_id}` first")
        except JobRecordError:
            pass  # a broken record is deleted like any other
    n = 0
    for prefix in (keys.job_spec(job_id), keys.job_progress(job_id), keys.job_inputs(job_id),
                   keys.job_results(job_id)):
        n += await store.delete_prefix(prefix) if prefix.endswith("/") else int(await store.delete(prefix))
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
            r = json.loads(rkv.value)
            ok = (isinstance(r, dict) and r.get("chunk") == k and r.get("inputs_sha256") == sha256_of(inputs)
                  and isinstance(r.get("vectors"), list) and len(r["vectors"]) == len(inputs)
                  and all(isinstance(v, str) for v in r["vectors"]))
        except (JobRecordError, ValueError) as e:
            raise VigilError(f"job {spec.id}: chunk {k}: {e}") from None
        if not ok:
            raise VigilError(f"job {spec.id}: the result of chunk {k} does not match its inputs")
        yield ChunkResult(k, k * spec.chunk_size, inputs, r["vectors"], str(r.get("node", "?")),
                          r["claim"] if isinstance(r.get("claim"), int) else 0)
