"""Batch jobs that survive their node: a 10,000-input embedding job on a lab
of 3 nodes (real etcd, agents, all-MiniLM-L6-v2 model servers), in one
shard (one node at a time) and in 8 (spread over the nodes), each without a
fault (the anchors) and with every process of a node working on it
SIGKILLed twice, mid-way through a shard (once a given number of inputs
are committed: the state waited for, not a clock).

Per run: wall time from submit to done, inputs/s, claims; per kill the
takeover gap (SIGKILL to the shard's next commit by another node, read from
the checkpoints every 20 ms); the results read back and checked (every input
once, each chunk against its inputs). Per kill also the claim gap (SIGKILL to
the orphaned shard's claim by another node: an idle node claims it once the
cluster convicts the dead node, a majority of its voters suspecting it, or
else on the owner record's deletion when the lease expires, never at a poll) and
the fresh shards claimed before the orphan (0: an orphan goes first). For comparison, the inputs a job
without checkpoints would embed again (everything done before each kill),
computed from the same run.

Then `--lone` samples (8) of the lone survivor's claim: a 1-shard job under
way, a node that does not own it SIGKILLed and gone from the registry, then
the owner: the last node cannot convict anyone, so it claims the shard when
the owner's lease has expired (it revokes that lease the moment etcd has
expired it: vigil.agent.lease_expiry), measured from the owner's SIGKILL.

Usage: python bench/jobs.py [--inputs 10000] [--chunk 64] [--lone 8]
       python bench/jobs.py --only lone [--lone 8]   (the other runs kept from the last JSON)
       python bench/jobs.py --render   (the markdown again from bench/results/jobs.json)
Writes bench/results/jobs.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, summary_ms, write  # noqa: E402

from vigil.core.jobs import JobSpec, chunked, sha256_of  # noqa: E402
from vigil.lab import Lab  # noqa: E402
from vigil.store import events, jobs  # noqa: E402
from vigil.store.etcd import EtcdStore  # noqa: E402
from vigil.store.keys import Keys  # noqa: E402

KEYS = Keys("lab")
TTL_MS = 2000  # the lab's lease TTL: the floor of a takeover (etcd deletes the owner record then)
WORDS = "grid pump valve turbine sensor feeder relay breaker transformer reservoir".split()


async def submit(store: EtcdStore, job: str, n: int, chunk: int, shards: int) -> None:
    """Submit job `job`: `n` generated inputs (the same for the same id) in chunks of `chunk`."""
    rng = random.Random(job)
    inputs = [f"{job} record {i}: {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))}" for i in range(n)]
    chunks = chunked(inputs, chunk)
    await jobs.submit(store, KEYS, JobSpec(job, "all-MiniLM-L6-v2", n, chunk, len(chunks), shards, time.time(),
                                           "bench", sha256_of(inputs)), chunks)


async def run(lab: Lab, job: str, n: int, chunk: int, shards: int, kills_at: list[int]) -> dict:
    store = EtcdStore(lab.etcd.endpoints, 2.0)
    try:
        t0 = time.monotonic()
        await submit(store, job, n, chunk, shards)
        killed: list[dict] = []
        view = await jobs.read_job(store, KEYS, job)
        while view.state in ("queued", "running"):
            await asyncio.sleep(0.02)
            view = await jobs.read_job(store, KEYS, job)
            for k in killed:
                sh, owner = view.shards[k["shard"]], view.owners.get(k["shard"], {}).get("node")
                if "claim_ms" not in k and owner and owner != k["node"]:
                    k["claim_ms"] = round((time.monotonic() - k["at"]) * 1000, 1)
                    # Fresh shards (never claimed at the kill) claimed before the orphan was.
                    k["fresh_claimed_first"] = [i for i in k.pop("fresh") if view.shards[i].claims]
                if "takeover_ms" not in k and (sh.state == "done" or (owner and owner != k["node"]
                                                                       and sh.next > k["chunk"])):
                    k["takeover_ms"] = round((time.monotonic() - k["at"]) * 1000, 1)
                    k["next_owner"] = owner or sh.node
            if len(killed) < len(kills_at) and view.done >= kills_at[len(killed)] \
                    and all("takeover_ms" in k for k in killed):
                victim = next(((i, view.owners[i]["node"]) for i, sh in enumerate(view.shards)
                               if i in view.owners and sh.state == "running" and sh.next < sh.end - 1
                               and view.owners[i].get("node") not in {k["node"] for k in killed}), None)
                if victim:
                    lab.kill_node(victim[1])
                    killed.append({"node": victim[1], "shard": victim[0], "chunk": view.shards[victim[0]].next,
                                   "done_at_kill": view.done, "at": time.monotonic(),
                                   "fresh": [i for i, x in enumerate(view.shards) if not x.claims]})
        wall = time.monotonic() - t0
        for k in killed:
            k.pop("at", None)
        seen = [c.first + i async for c in jobs.results(store, KEYS, view.spec, view.spec.chunks)
                for i in range(len(c.inputs))]
        # One key per chunk: a second commit would overwrite the first and leave `seen` intact;
        # etcd's version (puts since the key's creation) shows it.
        twice = [k for k in range(view.spec.chunks)
                 if (await store.get(KEYS.job_result(job, k))).version != 1]  # type: ignore[union-attr]
        return {"state": view.state, "inputs": n, "chunk": chunk, "shards": shards, "wall_s": round(wall, 1),
                "inputs_per_s": round(n / wall, 1), "claims": sum(p.claims for p in view.shards), "kills": killed,
                "results_checked": len(seen), "every_input_once": seen == list(range(n)) and not twice,
                "chunks_committed_twice": twice,
                "redone_without_checkpoints": sum(k["done_at_kill"] for k in killed)}
    finally:
        await store.close()


async def lone(lab: Lab, job: str, n: int, chunk: int) -> dict:
    """One sample of the lone survivor's claim: a 1-shard job under way, a node that
    does not own it SIGKILLed and gone from the registry (its member record deleted
    with its lease), then the owner SIGKILLed: the last node cannot convict anyone
    and claims the shard when the owner's lease has expired. The job is cancelled
    and deleted after."""
    store = EtcdStore(lab.etcd.endpoints, 2.0)
    try:
        await submit(store, job, n, chunk, 1)
        view = await jobs.read_job(store, KEYS, job)
        while not (view.owners.get(0) and view.shards[0].done >= 2 * chunk):
            await asyncio.sleep(0.02)
            view = await jobs.read_job(store, KEYS, job)
        owner = view.owners[0]["node"]
        other, survivor = [m.name for m in lab.nodes if m.name != owner][:2]
        lab.kill_node(other)
        while await store.get(KEYS.member(other)) is not None:
            await asyncio.sleep(0.02)
        lab.kill_node(owner)
        at, wall = time.monotonic(), time.time()
        while (view.owners.get(0) or {}).get("node") in (None, owner):
            await asyncio.sleep(0.01)
            view = await jobs.read_job(store, KEYS, job)
        claim_ms = round((time.monotonic() - at) * 1000, 1)
        await jobs.end_job(store, KEYS, job, "cancelled", "bench: sample taken", time.time())
        return {"owner": owner, "other": other, "survivor": survivor, "claim_ms": claim_ms,
                "next_owner": view.owners[0].get("node"), "revoked_by": await revoked_by(store, survivor, wall)}
    finally:
        await store.close()


async def revoked_by(store: EtcdStore, survivor: str, since: float) -> str:
    """Who ended the owner's lease: the survivor (its `lease_expired` event, written
    before its `job_claimed`, which is waited for) or etcd's own lease scan."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [e["kind"] for e in await events.read_events(store, KEYS, 200)
                if e.get("node") == survivor and float(e.get("at") or 0) >= since]  # type: ignore[arg-type]
        if "job_claimed" in mine:
            return "survivor" if "lease_expired" in mine else "etcd's scan"
        await asyncio.sleep(0.1)
    return "unknown (no job_claimed event within 10 s)"


def restart_killed(lab: Lab, result: dict) -> None:
    for k in result["kills"]:
        lab.start_agent(k["node"])
    lab.wait_for(lab.ready, 120, "every node ready again")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--lone", type=int, default=8, help="lone-survivor samples (a 3-node lab losing 2 nodes)")
    ap.add_argument("--only", choices=["lone"], help="run only the lone-survivor samples (the other runs kept)")
    ap.add_argument("--render", action="store_true", help="write the markdown from the last JSON, run nothing")
    args = ap.parse_args()
    if args.render:
        last = json.loads((RESULTS / "jobs.json").read_text())
        render(last["runs"], args.chunk, last.get("lone_survivor", []))
        return
    root = Path(tempfile.mkdtemp(prefix="vigil-jobs-"))
    lab = Lab.up(root / "lab", 3, model=True, workload={"generate": "none"}, timeout=120)
    n, runs = args.inputs, {}
    try:
        lab.wait_for(lab.ready, 120, "every node ready")
        for name, shards, kills in (("1 shard, no fault", 1, []), ("8 shards, no fault", 8, []),
                                    ("1 shard, 2 SIGKILLs", 1, [n // 5, 2 * n // 5]),
                                    ("8 shards, 2 SIGKILLs", 8, [n // 2, 7 * n // 10])):
            if args.only:
                break
            runs[name] = r = asyncio.run(run(lab, name.replace(" ", "").replace(",", "-"), n, args.chunk, shards,
                                             kills))
            print(name, r, flush=True)
            if r["kills"]:
                restart_killed(lab, r)
        samples = []
        for i in range(args.lone):
            samples.append(s := asyncio.run(lone(lab, f"lone-{i}", 3000, args.chunk)))
            print("lone survivor", s, flush=True)
            restart_killed(lab, {"kills": [{"node": s["owner"]}, {"node": s["other"]}]})
    finally:
        lab.down()
        shutil.rmtree(root, ignore_errors=True)
    if args.only:
        runs = json.loads((RESULTS / "jobs.json").read_text())["runs"]
    render(runs, args.chunk, samples)


def render(runs: dict, chunk: int, samples: list[dict]) -> None:
    rows = [["run", "state", "inputs", "wall s", "inputs/s", "claims", "claim gaps ms (SIGKILL to the orphan's "
             f"claim elsewhere; TTL {TTL_MS} + 200 = {TTL_MS + 200})", "fresh shards claimed before the orphan",
             "takeover gaps ms (SIGKILL to the shard's next commit elsewhere)", "every input once",
             "inputs a job without checkpoints would redo"]]
    for name, r in runs.items():
        rows.append([name, r["state"], r["inputs"], r["wall_s"], r["inputs_per_s"], r["claims"],
                     ", ".join(str(k.get("claim_ms")) for k in r["kills"]) or "-",
                     ", ".join(str(len(k.get("fresh_claimed_first", []))) for k in r["kills"]) or "-",
                     ", ".join(str(k.get("takeover_ms")) for k in r["kills"]) or "-",
                     r["every_input_once"], r["redone_without_checkpoints"] if r["kills"] else "-"])
    notes = (f"Lab: 3 nodes on one 2-core machine ({chunk} inputs per chunk; all-MiniLM-L6-v2, one thread "
             "per model server), lease TTL 2 s (the lab's timing). A kill SIGKILLs the agent and model server "
             "of a node mid-way through a shard; the shard's next owner resumes at its checkpoint, so at most "
             "the chunk in flight is embedded again. Killed nodes are restarted between runs. Results read "
             "back with vigil.store.jobs.results (each chunk checked against its inputs); 'every input once' "
             "also requires every result key to have been written exactly once (etcd version 1). A claim "
             "follows the dead node's conviction (it and a majority of its voters suspect it: here both "
             "survivors) when there is one; the second kill of a run leaves one survivor, no majority, so "
             "that shard waits for the dead node's lease to expire: the survivor revokes it the moment it "
             "has provably expired (vigil.agent.lease_expiry), unless etcd's lease scan (every 0.5 s) "
             "came first. The runs above are from the last full run; the lone-survivor samples below from "
             "the last run of either kind.")
    if samples:
        gaps = summary_ms([x["claim_ms"] / 1000 for x in samples])
        notes += (f"\n\nLone survivor, {gaps['n']} samples (a 1-shard job; a node that does not own it "
                  "SIGKILLed and gone from the registry, then the owner SIGKILLed; the last node claims the "
                  f"shard): claim gap ms min {gaps['min']}, p50 {gaps['p50']}, p99 {gaps['p99']}, max "
                  f"{gaps['max']} (target TTL + 200 = {TTL_MS + 200}); each in order: "
                  f"{', '.join(str(x['claim_ms']) for x in samples)}. The owner's lease ended by: "
                  + ", ".join(f"{by} {sum(x.get('revoked_by') == by for x in samples)}"
                              for by in sorted({x.get('revoked_by') for x in samples})) + ".")
    write("jobs", {"runs": runs, "lone_survivor": samples}, rows, notes)



if __name__ == "__main__":
    main()
