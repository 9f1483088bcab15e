"""A batch job of 10,000 inputs survives SIGKILL of its node twice: a lab of
3 nodes (real etcd, agents, all-MiniLM-L6-v2 model servers), the job
submitted, watched and read back with the `vigil job` commands as an operator
would; every process of the owning node SIGKILLed while it works, then of
the next owner. Every input is embedded exactly once in the results (checked
against the committed record of which node did which chunk under which
claim), and the embeddings equal what a model server answers for the same
inputs."""

from __future__ import annotations

import base64
import json
import random
import struct
import subprocess
import sys
import urllib.request

from vigil.core.jobs import payload_id
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


def owner_moved(lab: Lab, dead: set[str], past: int):
    def ok():
        j = job_state(lab)
        return j if j["node"] and j["node"] not in dead and j["done"] >= past else None
    return ok


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
    inputs = [f"record {i}: {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))}" for i in range(TOTAL)]
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
    lab = Lab.up(tmp_path / "lab", 3, model=True, workload={"generate": "none"}, timeout=120)
    try:
        d = str(lab.root)
        sub = json.loads(vigil("job", "submit", "--lab", d, "--input", str(tmp_path / "inputs.txt"),
                               "--id", "big", "--chunk", "50").stdout)
        assert (sub["total"], sub["chunks"], sub["state"]) == (TOTAL, 200, "queued")
        killed: list[tuple[str, int]] = []
        for _ in range(2):
            past = (killed[-1][1] if killed else 0) + 1000
            j = lab.wait_for(owner_moved(lab, {n for n, _ in killed}, past), 240,
                             f"a live owner with {past} inputs done")
            status = vigil("job", "status", "--lab", d, "big").stdout
            assert "big: running" in status and f"on {j['node']}" in status, status
            listed = json.loads(vigil("payloads", "--lab", d, "--json").stdout)
            mine = [p for p in listed if p["id"] == payload_id("big")]
            assert mine and mine[0]["node"] == j["node"] and mine[0]["kind"] == "job", listed
            lab.kill_node(j["node"])  # agent, model server: every process of the node
            killed.append((j["node"], j["done"]))
        waited = vigil("job", "wait", "--lab", d, "big", "--timeout", "600")
        final = json.loads(waited.stdout)
        assert (final["state"], final["done"], final["claims"]) == ("done", TOTAL, 3), final
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
            return [(c.chunk, c.node, c.claim) async for c in jobs.results(store, KEYS, spec, spec.chunks)]
        record = lab.with_store(ledger)
        assert [k for k, _, _ in record] == list(range(200)), "one committed result per chunk"
        runs = [(k, node, claim) for k, node, claim in record if k == 0 or record[k - 1][1:] != (node, claim)]
        assert [n for _, n, _ in runs[:2]] == [n for n, _ in killed] and len(runs) == 3, runs
        assert runs[0][2] < runs[1][2] < runs[2][2], "each claim's token is above the one before"
        for (first_chunk, _, _), (_, done_at_kill) in zip(runs[1:], killed):
            assert first_chunk * 50 >= done_at_kill, "the next owner resumed at the checkpoint, not earlier"

        survivor = runs[2][1]
        sample = rng.sample(range(TOTAL), 64)
        direct = embed(lab.node(survivor).server_url, [inputs[i] for i in sample])
        for i, want in zip(sample, direct):
            got = floats(rows[i]["embedding"])
            assert len(got) == 384 and max(abs(a - b) for a, b in zip(got, want)) < 1e-4, i
        events = json.loads(vigil("events", "--lab", d, "--limit", "0", "--json").stdout)
        kinds = [e["kind"] for e in events if e.get("job") == "big"]
        assert kinds.count("job_claimed") == 3 and kinds.count("job_done") == 1, kinds
    finally:
        lab.down()
