"""A batch job of 10,000 inputs survives SIGKILL of its node twice: a lab of
3 nodes (real etcd, agents, all-MiniLM-L6-v2 model servers), the job
submitted in 8 shards, watched and read back with the `vigil job` commands
as an operator would; every process of a node working on it SIGKILLed once
3,000 inputs are done, then of another at 5,000. Every input is embedded
exactly once in the results (checked against the committed record of which
node did which chunk under which claim: in each shard the claims only grow,
so each owner went on from the last one's checkpoint), and the embeddings
equal what a model server answers for the same inputs."""

from __future__ import annotations

import base64
import json
import random
import signal
import struct
import subprocess
import sys
import urllib.request

from vigil.lab import Lab
from vigil.store import jobs
from vigil.store.keys import Keys

TOTAL = 10_000
WORDS = "grid pump valve turbine sensor feeder relay breaker transformer reservoir".split()


def vigil(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=300)
    assert not check or p.returncode == 0, f"vigil {' '.join(args)}: rc {p.returncode}: {p.stderr}"
    return p


KEYS = Keys("lab")


def job_state(lab: Lab) -> dict:
    async def read(store):
        return (await jobs.read_job(store, KEYS, "big")).to_json()
    return lab.with_store(read)


def mid_way(j: dict, killed: list[str], node: str | None = None) -> dict | None:
    """A shard a live node (`node`, when given) has committed some of, but not all."""
    for sh in j["shards"]:
        if sh["node"] and sh["node"] not in killed and sh["state"] == "running" and \
                0 < sh["done"] and sh["next_chunk"] < sh["end_chunk"] - 1 and node in (None, sh["node"]):
            return sh
    return None


def frozen_mid_way(lab: Lab, killed: list[str]) -> str | None:
    """A node mid-way through a shard, its agent stopped (SIGSTOP) and the shard
    read again while it is: it commits nothing more, so when the read still finds
    it mid-way the kill that follows catches a shard with chunks left (read and
    kill apart, the node could finish the shard in between). None, the agent
    running again, when it is not."""
    found = mid_way(job_state(lab), killed)
    if found is None:
        return None
    victim = found["node"]
    lab.signal_agent(victim, signal.SIGSTOP)
    # A commit it had already sent may still land: read until its shard stands still.
    still = lab.wait_for(lambda: (lambda a, b: b if a == b else None)(
        job_state(lab)["shards"][found["shard"]], job_state(lab)["shards"][found["shard"]]), 10,
        "the stopped node's checkpoint to stand still")
    if mid_way({"shards": [still]}, killed, victim):
        return victim
    lab.signal_agent(victim, signal.SIGCONT)
    return None


def embed(url: str, texts: list[str]) -> list[tuple[float, ...]]:
    req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(
        {"input": texts, "encoding_format": "base64"}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [floats(d["embedding"]) for d in json.load(r)["data"]]


def floats(b64: str) -> tuple[float, ...]:
    raw = base64.b64decode(b64)
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def test_a_10000_input_job_survives_two_sigkills_of_its_node(tmp_path):
    rng = random.Random(7)
    # Short inputs keep the model's share of the suite small (3x faster than sentences);
    # bench/jobs.py embeds sentences.
    inputs = [f"{rng.choice(WORDS)} {i}" for i in range(TOTAL)]
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
    lab = Lab.up(tmp_path / "lab", 3, model=True, workload={"generate": "none"}, timeout=120)
    try:
        d = str(lab.root)
        sub = json.loads(vigil("job", "submit", "--lab", d, "--input", str(tmp_path / "inputs.txt"),
                               "--id", "big", "--chunk", "50", "--shards", "8").stdout)
        assert (sub["total"], sub["chunks"], sub["shards"], sub["state"]) == (TOTAL, 200, 8, "queued")
        killed: list[str] = []
        for due in (3000, 5000):  # inputs committed before each SIGKILL: the state waited for
            lab.wait_for(lambda: job_state(lab)["done"] >= due, 240, f"{due} inputs done")
            status = lab.wait_for(lambda: (lambda out: out if " on n" in out else None)(
                vigil("job", "status", "--lab", d, "big").stdout), 60, "the job status to name a node on it")
            assert "big: running" in status, status
            lab.wait_for(lambda: any(p["id"].startswith("job:big:") and p["kind"] == "job" for p in
                                     json.loads(vigil("payloads", "--lab", d, "--json").stdout)), 60,
                         "a shard's owner record in `vigil payloads`")
            victim = lab.wait_for(lambda: frozen_mid_way(lab, killed), 60,
                                  "a live node frozen mid-way through a shard")
            lab.kill_node(victim)  # agent and model server: every process of the node
            killed.append(victim)
        waited = vigil("job", "wait", "--lab", d, "big", "--timeout", "600")
        final = json.loads(waited.stdout)
        assert (final["state"], final["done"]) == ("done", TOTAL) and final["claims"] >= 10, final
        assert "inputs (" in waited.stderr, "progress printed while waiting"

        out = tmp_path / "results.jsonl"
        wrote = json.loads(vigil("job", "results", "--lab", d, "big", "--out", str(out),
                                 "--encoding", "base64").stdout)
        assert wrote["written"] == TOTAL
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["index"] for r in rows] == list(range(TOTAL)), "every input exactly once, in order"
        assert [r["input"] for r in rows] == inputs

        async def ledger(store):
            spec = (await jobs.read_job(store, KEYS, "big")).spec
            twice = [k for k in range(spec.chunks) if (await store.get(KEYS.job_result("big", k))).version != 1]
            return spec, twice, [(c.chunk, c.node, c.claim)
                                 async for c in jobs.results(store, KEYS, spec, spec.chunks)]
        spec, twice, record = lab.with_store(ledger)
        assert [k for k, _, _ in record] == list(range(200)), "one committed result per chunk"
        assert not twice, f"chunks committed more than once (a later commit overwrote the first): {twice}"
        moved = 0
        for shard in range(spec.shards):
            lo, hi = spec.shard_range(shard)
            claims = [claim for _, _, claim in record[lo:hi]]
            assert claims == sorted(claims), f"shard {shard}: each owner went on from the last one's checkpoint"
            runs = [record[k][1] for k in range(lo, hi) if k == lo or record[k][2] != record[k - 1][2]]
            moved += len(runs) - 1
        assert moved >= 2, "both SIGKILLs caught a shard mid-way, which another node finished"

        survivor = next(n.name for n in lab.nodes if n.name not in killed)
        sample = rng.sample(range(TOTAL), 64)
        direct = embed(lab.node(survivor).server_url, [inputs[i] for i in sample])
        for i, want in zip(sample, direct):
            got = floats(rows[i]["embedding"])
            assert len(got) == 384 and max(abs(a - b) for a, b in zip(got, want)) < 1e-4, i
        events = json.loads(vigil("events", "--lab", d, "--limit", "0", "--json").stdout)
        kinds = [e["kind"] for e in events if e.get("job") == "big"]
        assert kinds.count("job_claimed") >= 10 and kinds.count("job_done") >= 1, kinds
    finally:
        lab.down()
