"""`vigil job submit|status|list|wait|results|cancel|delete`: batch embedding
jobs that survive their node (vigil.core.jobs, vigil.agent.jobs).

Exit codes as every command: 0 ok, 1 the operation failed (no such job, the
job failed or was cancelled while waited on, a wait timed out), 2 bad input.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import secrets
import struct
import sys
import time
from pathlib import Path

from vigil.cli.target import add_target_args, resolve
from vigil.core.jobs import (DEFAULT_CHUNK, DEFAULT_SHARDS, JOB_ID, MAX_SHARDS, JobSpec, chunked, parse_inputs,
                             sha256_of)
from vigil.errors import ConfigError, StoreUnavailable, VigilError
from vigil.serve.model import MODEL_ID
from vigil.store import jobs


def register(sub) -> None:
    p = sub.add_parser("job", help="batch embedding jobs: checkpointed, resumed on another node when "
                                   "theirs dies, every input done exactly once")
    job_sub = p.add_subparsers(dest="job_command", metavar="submit|status|list|wait|results|cancel|delete",
                               parser_class=type(p))
    job_sub.required = True
    s = job_sub.add_parser("submit", help="submit a job: one input per line of FILE")
    add_target_args(s)
    s.add_argument("--input", required=True, metavar="FILE", help="the inputs ('-': standard input)")
    s.add_argument("--format", choices=("lines", "jsonl"), help="lines: one input per non-empty line; jsonl: "
                   "a JSON string or {\"input\": ...} per line (default: by the file name's .jsonl)")
    s.add_argument("--model", default=MODEL_ID, help=f"the embedding model (default {MODEL_ID})")
    s.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"inputs per request and per checkpoint (default {DEFAULT_CHUNK})")
    s.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                   help=f"parts of the job that nodes take one each, at once (default {DEFAULT_SHARDS}, at most "
                        f"{MAX_SHARDS} and the number of chunks)")
    s.add_argument("--id", help="the job's id (default: job-<date>-<random>)")
    s.set_defaults(func=submit)
    for name, helptext, fn in (("status", "a job's state and progress", status),
                               ("cancel", "stop a job (its node stops at its next checkpoint)", cancel),
                               ("delete", "remove a finished or cancelled job and its results", delete)):
        c = job_sub.add_parser(name, help=helptext)
        add_target_args(c)
        c.add_argument("job")
        if name == "status":
            c.add_argument("--json", action="store_true", help="print JSON (the documented contract)")
        c.set_defaults(func=fn)
    c = job_sub.add_parser("list", help="every job, oldest first")
    add_target_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=list_jobs)
    c = job_sub.add_parser("wait", help="wait for a job to end, printing its progress")
    add_target_args(c)
    c.add_argument("job")
    c.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    c.set_defaults(func=wait)
    c = job_sub.add_parser("results", help="write a finished job's embeddings as JSON lines")
    add_target_args(c)
    c.add_argument("job")
    c.add_argument("--out", required=True, metavar="FILE", help="{\"index\", \"input\", \"embedding\"} per "
                   "line, in input order")
    c.add_argument("--encoding", choices=("float", "base64"), default="float",
                   help="embedding as a list of floats (default) or base64 float32 little-endian")
    c.set_defaults(func=results)


def _run(args, coro_fn):
    target = resolve(args)
    return target.run(lambda store: coro_fn(store, target.keys, target))


def _read_inputs(args) -> list[str]:
    fmt = args.format or ("jsonl" if args.input.endswith(".jsonl") else "lines")
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--input", args.input, f"cannot be read as UTF-8 text: {e}") from None
    return parse_inputs(text, fmt, "--input" if args.input == "-" else args.input)


def submit(args) -> int:
    job_id = args.id or f"job-{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    if not JOB_ID.match(job_id):
        raise ConfigError("--id", args.id, "must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                                           "letter or digit")
    if not (isinstance(args.model, str) and 0 < len(args.model) <= 128):
        raise ConfigError("--model", args.model, "must name a model, 1-128 characters")
    if not 1 <= args.shards <= MAX_SHARDS:
        raise ConfigError("--shards", args.shards, f"must be 1 to {MAX_SHARDS}")
    inputs = _read_inputs(args)
    chunks = chunked(inputs, args.chunk)
    shards = min(args.shards, len(chunks))  # a shard holds at least one chunk

    async def go(store, keys, target):
        spec = JobSpec(job_id, args.model, len(inputs), args.chunk, len(chunks), shards, time.time(),
                       target.operator, sha256_of(inputs))
        await jobs.submit(store, keys, spec, chunks)
        return spec
    spec = _run(args, go)
    print(json.dumps({"id": spec.id, "model": spec.model, "total": spec.total, "chunks": spec.chunks,
                      "shards": spec.shards, "state": "queued"}))
    return 0


def status(args) -> int:
    view = _run(args, lambda store, keys, target: jobs.read_job(store, keys, args.job))
    doc = view.to_json()
    print(json.dumps(doc, indent=2) if args.json else _line(doc))
    return 0


def _line(j: dict) -> str:
    open_job = j["state"] in ("queued", "running")
    where = (f"on {', '.join(j['nodes'])}" if j["nodes"] else "waiting for a node") if open_job else "no node"
    done = sum(s["state"] == "done" for s in j["shards"])
    why = f" ({j['reason']})" if j.get("reason") else ""
    return (f"{j['id']}: {j['state']} {j['done']}/{j['total']} inputs ({j['percent']}%), {done}/"
            f"{len(j['shards'])} shards done, {where}, {j['claims']} claim(s){why}")


def list_jobs(args) -> int:
    docs = _run(args, lambda store, keys, target: jobs.list_jobs(store, keys))
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        for j in docs:
            print(_line(j) if "total" in j else f"{j['id']}: {j['state']}: {j['reason']}")
    return 0


def wait(args) -> int:
    if not args.timeout > 0:
        raise ConfigError("--timeout", args.timeout, "must be a positive number of seconds")

    async def go(store, keys, target):
        deadline, last = time.monotonic() + args.timeout, ""
        while True:
            try:
                doc = (await jobs.read_job(store, keys, args.job)).to_json()
            except StoreUnavailable as e:  # etcd away a moment: the wait goes on to its deadline
                if time.monotonic() > deadline:
                    raise VigilError(f"job {args.job}: etcd did not answer before the deadline: {e}") from None
                await asyncio.sleep(1.0)
                continue
            line = _line(doc)
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
            if doc["state"] not in ("queued", "running"):
                return doc
            if time.monotonic() > deadline:
                raise VigilError(f"job {args.job} still {doc['state']} after {args.timeout:g} s "
                                 f"({doc['done']}/{doc['total']})")
            await asyncio.sleep(1.0)
    doc = _run(args, go)
    print(json.dumps(doc))
    return 0 if doc["state"] == "done" else 1


def results(args) -> int:
    async def go(store, keys, target):
        view = await jobs.read_job(store, keys, args.job)
        if view.state != "done":
            raise VigilError(f"job {args.job} is {view.state} ({view.done}/{view.spec.total}): results are "
                             "written once it is done")
        n = 0
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                async for c in jobs.results(store, keys, view.spec, view.spec.chunks):
                    for i, (text, vec) in enumerate(zip(c.inputs, c.vectors)):
                        emb = vec if args.encoding == "base64" else _floats(vec, c.chunk)
                        out.write(json.dumps({"index": c.first + i, "input": text, "embedding": emb}) + "\n")
                        n += 1
        except OSError as e:
            raise ConfigError("--out", args.out, f"cannot be written: {e}") from None
        return n
    n = _run(args, go)
    print(json.dumps({"id": args.job, "written": n, "out": args.out}))
    return 0


def _floats(b64: str, chunk: int) -> list[float]:
    try:
        raw = base64.b64decode(b64, validate=True)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw[:len(raw) // 4 * 4]))
    except ValueError:  # binascii.Error is one
        raise VigilError(f"chunk {chunk}: an embedding is not base64 float32 (a record not Vigil's)") from None


def cancel(args) -> int:
    state = _run(args, lambda store, keys, target: jobs.end_job(store, keys, args.job, "cancelled",
                                                                 f"cancelled by {target.operator}", time.time()))
    print(json.dumps({"id": args.job, "state": state}))
    return 0


def delete(args) -> int:
    n = _run(args, lambda store, keys, target: jobs.delete(store, keys, args.job))
    if n == 0:
        raise VigilError(f"no job {args.job!r} to delete (see `vigil job list`)")
    print(json.dumps({"id": args.job, "deleted_keys": n}))
    return 0
