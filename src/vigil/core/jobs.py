"""Batch jobs: a list of inputs embedded by the cluster's nodes, in shards
each owned by one node at a time, checkpointed chunk by chunk so that a job
survives its nodes.

The records (layout in vigil.store.keys; all JSON, all read as untrusted):
- spec        {id, model, total, chunk_size, chunks, shards, submitted, by, inputs_sha256}:
              written once
- input/k     the k-th chunk of inputs, a list of strings
- progress/s  shard s's checkpoint {state, next, end, done, claims, node, updated, reason}.
              Shard s is chunks [start, end) (`shard_range`); `next` is its first chunk not
              yet committed; its chunks commit in order, so its `done` inputs are exactly
              chunks start..next-1
- result/k    {chunk, node, claim, at, inputs_sha256, vectors}: the k-th chunk's embeddings
- the owner   the payload record `job:<id>:<s>` (vigil.core.payloads), created under the
              owning node's lease; its create revision is the claim (the shard's fencing token)

Exactly once: a chunk's result is written in one transaction with the
checkpoint that moves past it, on two conditions: the owner record still has
the owner's claim revision, and the checkpoint is the one the owner last
read. A node that lost the shard (its lease expired while it was paused; the
shard was claimed again) fails the first; a result committed twice fails the
second. Work a killed node did but had not committed is done again by the
next owner; nothing is committed twice and nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Mapping, TypeGuard, TypeVar

from vigil.core.records import (BULK, CLUSTER, JSON, BadRecord, Limits, decode_json, integer, strings,
                                unix_time)
from vigil.errors import ConfigError, VigilError
from vigil.openai_fields import MAX_EMBEDDING_INPUTS, MAX_INPUT_CHARS

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATES = ("queued", "running", "done", "cancelled", "failed")
OPEN = ("queued", "running")
MAX_INPUTS = 100_000  # per job: its results take ~2 kB each in etcd
MAX_CHUNK = MAX_EMBEDDING_INPUTS  # one chunk is one embeddings request
MAX_CHUNK_BYTES = 512 * 1024  # one etcd write per chunk, well under etcd's 1.5 MiB request limit
DEFAULT_CHUNK = 64
MAX_SHARDS = 64  # one transaction writes them all at submit (etcd allows 128 operations)
DEFAULT_SHARDS = 8  # more than the nodes of a small cluster: a node that finishes one takes the next

_T = TypeVar("_T")


class JobRecordError(VigilError):
    """A job record in the store is not one Vigil wrote (corrupt or foreign)."""


def payload_id(job_id: str, shard: int | None = None) -> str:
    """A shard's owner record id (vigil.core.payloads); without a shard, the prefix of the job's."""
    return f"job:{job_id}:" + ("" if shard is None else str(shard))


def sha256_of(inputs: list[str]) -> str:
    return hashlib.sha256(json.dumps(inputs, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class JobSpec:
    id: str
    model: str
    total: int
    chunk_size: int
    chunks: int
    shards: int
    submitted: float
    by: str
    inputs_sha256: str

    def record(self) -> str:
        return json.dumps(asdict(self))

    def shard_range(self, shard: int) -> tuple[int, int]:
        """The chunks [start, end) of `shard`: contiguous, as even as they divide."""
        return shard * self.chunks // self.shards, (shard + 1) * self.chunks // self.shards

    def checkpoints(self) -> list["Progress"]:
        """Every shard's first checkpoint, queued."""
        return [Progress(next=lo, end=hi) for lo, hi in map(self.shard_range, range(self.shards))]


@dataclass(frozen=True)
class Progress:
    state: str = "queued"
    next: int = 0  # first chunk of the shard not committed
    end: int = 0  # the chunk after the shard's last
    done: int = 0  # inputs committed
    claims: int = 0  # times a node took the job
    node: str = ""  # the node that last claimed it
    updated: float = 0.0
    reason: str = ""

    def record(self) -> str:
        return json.dumps(asdict(self))

    def claimed(self, node: str, now: float) -> "Progress":
        return replace(self, state="running", claims=self.claims + 1, node=node, updated=now)

    def committed(self, inputs: int, now: float) -> "Progress":
        nxt = self.next + 1
        return replace(self, next=nxt, done=self.done + inputs, updated=now,
                       state="done" if nxt >= self.end else self.state)

    def ended(self, state: str, reason: str, now: float) -> "Progress":
        return replace(self, state=state, reason=reason, updated=now)


def _field(d: Mapping[str, JSON], name: str, kind: type[_T] | tuple[type[_T], ...], what: str) -> _T:
    v = d.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise JobRecordError(f"{what}: '{name}' is {str(v)[:40]!r}, not a {getattr(kind, '__name__', 'number')}")
    return v


def _count(d: Mapping[str, JSON], name: str, what: str, hi: int = MAX_INPUTS) -> int:
    v: int = _field(d, name, int, what)
    if not 0 <= v <= hi:
        raise JobRecordError(f"{what}: '{name}' is {v}, not from 0 to {hi}")
    return v


def _time(d: Mapping[str, JSON], name: str, what: str) -> float:
    """A Unix time: decode_json already refused a number float() cannot hold."""
    v = _field(d, name, (int, float), what)
    if not unix_time(v):
        raise JobRecordError(f"{what}: '{name}' is {v!r}, not a Unix time")
    return float(v)


def parse_spec(raw: str, key: str) -> JobSpec:
    """A spec record as read from the store; JobRecordError (and nothing else)
    names the key and the field."""
    d = _json_object(raw, key)
    spec = JobSpec(_field(d, "id", str, key), _field(d, "model", str, key), _count(d, "total", key),
                   _count(d, "chunk_size", key, MAX_CHUNK), _count(d, "chunks", key), _count(d, "shards", key, MAX_SHARDS),
                   _time(d, "submitted", key), str(d.get("by", ""))[:256], _field(d, "inputs_sha256", str, key))
    if not (JOB_ID.fullmatch(spec.id) and 0 < spec.total <= MAX_INPUTS and 0 < spec.chunk_size <= MAX_CHUNK
            and spec.chunks == -(-spec.total // spec.chunk_size) and 0 < spec.shards <= min(spec.chunks,
                                                                                             MAX_SHARDS)):
        raise JobRecordError(f"{key}: id, total, chunk_size, chunks and shards do not agree: {str(d)[:200]}")
    return spec


def progress_from(d: Mapping[str, JSON], key: str) -> Progress:
    """A checkpoint's fields, each bounded; not yet checked against its spec."""
    p = Progress(_field(d, "state", str, key), _count(d, "next", key), _count(d, "end", key),
                 _count(d, "done", key), _count(d, "claims", key, 2**62), str(d.get("node", ""))[:64],
                 _time(d, "updated", key), str(d.get("reason", ""))[:1024])
    if p.state not in STATES:
        raise JobRecordError(f"{key}: state {p.state[:40]!r} is not one of {', '.join(STATES)}")
    return p


def progress_record(raw: str, key: str) -> Progress:
    """A checkpoint record, each field bounded; not yet checked against its spec."""
    return progress_from(_json_object(raw, key), key)


def parse_progress(raw: str, key: str, spec: JobSpec, shard: int) -> Progress:
    """Shard `shard`'s checkpoint, checked against the spec's bounds for it."""
    p = progress_record(raw, key)
    lo, hi = spec.shard_range(shard) if 0 <= shard < spec.shards else (0, -1)
    if not lo <= p.next <= hi or p.end != hi:
        raise JobRecordError(f"{key}: next {p.next} or end {p.end} out of range for shard {shard} "
                             f"(chunks {lo}..{hi - 1})")
    return p


def _inputs(v: JSON) -> TypeGuard[list[str]]:
    """1 to MAX_CHUNK strings of at most MAX_INPUT_CHARS characters."""
    return (isinstance(v, list) and 0 < len(v) <= MAX_CHUNK
            and all(isinstance(x, str) and len(x) <= MAX_INPUT_CHARS for x in v))


def chunk_inputs(raw: str, key: str) -> list[str]:
    """A chunk of inputs as any job may hold it: 1 to MAX_CHUNK strings of at most
    MAX_INPUT_CHARS characters."""
    inputs = decode_json(key, raw, BULK)
    if isinstance(inputs, BadRecord):
        raise JobRecordError(f"{key}: {inputs.problem}")
    if not _inputs(inputs):
        raise JobRecordError(f"{key}: not a list of 1 to {MAX_CHUNK} inputs of at most {MAX_INPUT_CHARS} characters")
    return inputs


def parse_chunk(raw: str, key: str, spec: JobSpec, chunk: int) -> list[str]:
    """The inputs of chunk `chunk`: as many strings as the spec says it holds."""
    inputs = chunk_inputs(raw, key)
    want = min(spec.chunk_size, spec.total - chunk * spec.chunk_size)
    if len(inputs) != want:
        raise JobRecordError(f"{key}: expected a list of {want} strings, not {len(inputs)}")
    return inputs


@dataclass(frozen=True)
class ChunkRecord:
    """A committed chunk's result record (result/k)."""
    chunk: int
    node: str
    claim: int
    at: float
    inputs_sha256: str
    vectors: list[str]  # base64 float32, one per input


def result_from(raw: str, key: str) -> ChunkRecord:
    """A result record's fields, each bounded; not yet checked against its inputs."""
    d = _json_object(raw, key, BULK)
    vectors = _field(d, "vectors", list, key)
    if not strings(vectors, MAX_CHUNK):
        raise JobRecordError(f"{key}: 'vectors' is not a list of at most {MAX_CHUNK} base64 strings")
    claim, at = d.get("claim"), d.get("at")
    return ChunkRecord(_count(d, "chunk", key), str(d.get("node", "?"))[:64],
                       claim if integer(claim, 0, 2**62) else 0,
                       float(at) if unix_time(at) else 0.0,
                       str(d.get("inputs_sha256", ""))[:64], vectors)


def shard_of(tail: str) -> int | None:
    """A shard number as it ends a key (ASCII digits, at most 6), else None."""
    return int(tail) if 0 < len(tail) <= 6 and tail.isascii() and tail.isdigit() else None


def _json_object(raw: str, key: str, limits: Limits = CLUSTER) -> dict[str, JSON]:
    d = decode_json(key, raw, limits)
    if isinstance(d, BadRecord):
        raise JobRecordError(f"{key}: {d.problem}")
    if not isinstance(d, dict):
        raise JobRecordError(f"{key}: not a JSON object")
    return d


def parse_inputs(text: str, fmt: str, where: str) -> list[str]:
    """The inputs of a job file: `lines` (one input per non-empty line) or `jsonl`
    (one JSON string, or an object with "input", per line). ConfigError names
    the line and the fix."""
    inputs: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item: JSON = line
        if fmt == "jsonl":
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"{where} line {n}", line[:80], f"is not JSON ({e}); write one JSON "
                                  "string or {\"input\": \"...\"} per line, or use --format lines") from None
            if isinstance(item, dict):
                item = item.get("input")
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where} line {n}", line[:80], "must be a non-empty string")
        if len(item) > MAX_INPUT_CHARS:
            raise ConfigError(f"{where} line {n}", f"{len(item)} characters",
                              f"an input holds at most {MAX_INPUT_CHARS} characters; split it")
        inputs.append(item)
    if not 0 < len(inputs) <= MAX_INPUTS:
        raise ConfigError(where, f"{len(inputs)} inputs", f"a job holds 1 to {MAX_INPUTS} inputs; "
                          "split a larger one into several jobs")
    return inputs


def chunked(inputs: list[str], chunk_size: int) -> list[list[str]]:
    """The inputs in chunks of `chunk_size`; ConfigError when one chunk would be too big to commit."""
    if not 0 < chunk_size <= MAX_CHUNK:
        raise ConfigError("--chunk", chunk_size, f"must be 1 to {MAX_CHUNK} inputs (the model server's "
                          "bound per request)")
    chunks = [inputs[i:i + chunk_size] for i in range(0, len(inputs), chunk_size)]
    for k, c in enumerate(chunks):
        size = len(json.dumps(c, ensure_ascii=False).encode())
        if size > MAX_CHUNK_BYTES:
            raise ConfigError("--chunk", chunk_size, f"chunk {k} holds {size} bytes of input, over "
                              f"{MAX_CHUNK_BYTES}; choose a smaller --chunk")
    return chunks


def job_state(shards: list[Progress]) -> str:
    """A job's state from its shards': failed or cancelled if one is, done when all are."""
    states = {p.state for p in shards}
    for s in ("failed", "cancelled"):
        if s in states:
            return s
    return "done" if states == {"done"} else "running" if "running" in states or "done" in states else "queued"


def pick_shard(specs: dict[str, JobSpec], progress: dict[tuple[str, int], Progress],
               owned: set[tuple[str, int]]) -> tuple[str, int] | None:
    """The shard a free node should claim: of the oldest submitted job that is still
    open (no shard failed or cancelled), an open shard nobody owns: an orphan first
    (claimed before, its owner's lease gone: it resumes at its checkpoint and its
    inputs have waited longest), else the first fresh one."""
    for spec in sorted(specs.values(), key=lambda s: (s.submitted, s.id)):
        found = [progress.get((spec.id, s)) for s in range(spec.shards)]
        shards = [p for p in found if p is not None]
        if len(shards) < len(found) or job_state(shards) not in OPEN:
            continue  # a job whose checkpoints are not all there is not claimed
        free = [(p.claims == 0, s) for s, p in enumerate(shards) if p.state in OPEN and (spec.id, s) not in owned]
        if free:
            return spec.id, min(free)[1]
    return None


def crowded(job: str, shard: int, progress: dict[tuple[str, int], Progress], owned: set[tuple[str, int]],
            domain_of: dict[str, str], mine: str) -> bool:
    """Whether this node should leave the first claim of `job`'s `shard` to a node
    of another failure domain a while (a soft spread, as Kubernetes' preferred
    topology spread): its domain, `domain_of[mine]`, already runs more of the job's
    shards than another domain does, so a rack's loss would orphan more of the job
    than it must. Only domains whose nodes have claimed shards count (a rack of
    nodes that take no jobs is nowhere to go). A shard claimed before (an orphan to
    resume) is never crowded: resuming it at once matters more than where it runs."""
    first = progress.get((job, shard))
    if first is None or first.claims or mine not in domain_of:
        return False
    workers = {domain_of[p.node] for p in progress.values() if p.node in domain_of}
    running = {d: 0 for d in workers | {domain_of[mine]}}
    for (j, s), p in progress.items():
        if j == job and (j, s) in owned and p.state == "running" and p.node in domain_of:
            running[domain_of[p.node]] += 1
    return running[domain_of[mine]] > min(running.values())
