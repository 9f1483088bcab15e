"""`vigil demo`: a local 3-node cluster (etcd, agents, real model servers,
router) under a steady stream of embedding requests, through four faults:

1. SIGKILL of the leader node (agent and model server), while three long
   streamed generations run, one on each node: the one on the leader's node
   is resumed on another node mid-stream (vigil.router.resume),
2. SIGSTOP of a model server for 10 s (a hung engine on a live node),
3. restart of the killed node (it rejoins as a standby),
4. a graceful switchover.

Prints a report (and `--json` only the JSON), writes demo-report.json and
demo-timeline.png, and exits 1 if any request failed or any stream did not
arrive whole and exact.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from vigil.agent.history import read_records
from vigil.lab import Lab
from vigil.lab.generative import load_model
from vigil.lab.load import LoadGenerator
from vigil.lab.report import Fault, build, plot
from vigil.lab.streams import StreamWatch

STOP_SECONDS = 10.0
SETTLE = 5.0


class Demo:
    def __init__(self, lab: Lab, say: Callable[[str], None]):
        self.lab, self.say = lab, say
        self.gen = LoadGenerator(lab.router.url + "/v1/embeddings", rate=30)
        self.faults: list[Fault] = []
        self.model = load_model(lab.workload.generate)

    def events_after(self, t0: float, kind: str, **match) -> list[dict]:
        return [e for e in self.lab.events() if e["at"] >= t0 and e["kind"] == kind
                and all(e.get(k) == v for k, v in match.items())]

    def settle(self, seconds: float = SETTLE) -> None:
        n = len(self.gen.samples) + int(self.gen.rate * seconds)
        self.lab.wait_for(lambda: len(self.gen.samples) >= n, seconds * 4 + 30, "steady traffic")

    def kill_leader(self) -> str:
        old, token = self.lab.leader()
        watch = StreamWatch(self.lab.router.url, self.model) if self.model else None
        if watch:
            self.say(f"      three streamed generations of {watch.tokens} tokens through the router first")
            watch.start()
            watch.wait_tokens(20, 60)
        f = Fault("kill leader", f"SIGKILL agent and model server of {old} (leader, token {token})",
                  time.time())
        self.say(f"[1/4] {f.action}")
        self.lab.kill_node(old)
        new, new_token = self.lab.wait_for(
            lambda: (lambda c: c if c and c[0] != old else None)(self.lab.leader()), 30, "new leader")
        sus = self.lab.wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(
            self.events_after(f.start, "peer_suspected", peer=old)), 15, "suspicion")
        f.detection_ms = round((max(e["detected_at"] for e in sus) - f.start) * 1000, 1)
        starts = [r["at"] for r in read_records(self.lab.history_files())
                  if r["token"] == new_token and r["event"] == "start"]
        f.takeover_ms = round((starts[0] - f.start) * 1000, 1) if starts else None
        f.detail = {"old_leader": old, "new_leader": new, "old_token": token, "new_token": new_token}
        self.settle(2)
        if watch:
            f.detail["streams"] = [r.summary() for r in watch.join(120)]
        f.end = time.time()
        self.say(f"      all peers suspected {old} after {f.detection_ms:.0f} ms; {new} leads with "
                 f"token {new_token} after {f.takeover_ms:.0f} ms (lease TTL 2 s)")
        for s in f.detail.get("streams", []):
            moved = "; ".join(f"resumed {r['from']}->{r['to']} at token {r['at_token']} (gap {r['gap_ms']} ms)"
                              for r in s["resumes"]) or f"on {s['node']}, not touched"
            self.say(f"      stream {moved}: {s['tokens']} tokens, "
                     f"{'whole and exact' if s['complete'] else 'BROKEN: ' + (s['error'] or 'not exact')}")
        self.faults.append(f)
        return old

    def hang_server(self, down: str) -> None:
        victim = next(n.name for n in self.lab.nodes if n.name != down and n.name != self.lab.leader()[0])
        f = Fault("hang server", f"SIGSTOP the model server of {victim} for {STOP_SECONDS:g} s",
                  time.time())
        self.say(f"[2/4] {f.action}")
        self.lab.signal_server(victim, signal.SIGSTOP)
        try:
            ev = self.lab.wait_for(lambda: self.events_after(f.start, "inference_not_ready"), 20,
                                   "the hang to be noticed")
            f.detection_ms = round((ev[0]["at"] - f.start) * 1000, 1)
            self.lab.wait_for(lambda: time.time() >= f.start + STOP_SECONDS, 20, "the hang to last")
        finally:
            self.lab.signal_server(victim, signal.SIGCONT)
        self.lab.wait_for(lambda: self.events_after(f.start, "inference_ready"), 30, "recovery")
        f.end = time.time()
        f.detail = {"node": victim, "cause": ev[0]["cause"]}
        self.say(f"      the agent called the engine hung after {f.detection_ms:.0f} ms: {ev[0]['cause']}")
        self.faults.append(f)
        self.settle(3)

    def restart(self, name: str) -> None:
        f = Fault("restart node", f"restart {name} (agent and model server)", time.time())
        self.say(f"[3/4] {f.action}")
        # At nice 10: on the lab's shared cores its model load must not starve the nodes
        # that serve meanwhile (separate machines share no CPU).
        self.lab.start_agent(name, nice=10)
        self.lab.wait_for(self.lab.ready, 120, f"{name} ready")
        f.end = time.time()
        f.takeover_ms = round((f.end - f.start) * 1000, 1)
        leader = self.lab.leader()
        f.detail = {"node": name, "role": "leader" if leader and leader[0] == name else "standby"}
        self.say(f"      {name} serving again after {f.takeover_ms / 1000:.1f} s, as {f.detail['role']}")
        self.faults.append(f)
        self.settle(3)

    def switchover(self) -> None:
        old, token = self.lab.leader()
        target = next(n.name for n in self.lab.nodes if n.name != old)
        f = Fault("switchover", f"vigil switchover --to {target} (from {old})", time.time())
        self.say(f"[4/4] {f.action}")
        # The operator's own command, as a process of its own (the lab sits below the CLI).
        rc = subprocess.run([sys.executable, "-m", "vigil", "switchover", "--to", target, "--lab",
                             str(self.lab.root)], capture_output=True, timeout=60).returncode
        new = self.lab.leader()
        f.end = time.time()
        f.takeover_ms = round((f.end - f.start) * 1000, 1)
        f.detection_ms = 0.0
        f.detail = {"from": old, "to": target, "exit_status": rc, "new_token": new[1] if new else None}
        self.say(f"      {target} leads with token {f.detail['new_token']} after {f.takeover_ms:.0f} ms")
        self.faults.append(f)
        self.settle(3)

    def run(self) -> None:
        self.settle(SETTLE)
        down = self.kill_leader()
        self.hang_server(down)
        self.restart(down)
        self.switchover()


def run_demo(out: Path, as_json: bool, keep: bool = False, secure: bool = False) -> int:
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if as_json else (lambda m: print(m, flush=True))
    root = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    say(f"starting 3 etcd members, 3 agents with model servers (all-MiniLM-L6-v2) and a router in {root}")
    if secure:
        say("secure: etcd with TLS, client certificates, and a user and role per agent, router and "
            "operator")
    # Three nodes share this machine's cores: a node's start-up can stall the others for a
    # few seconds, so the router lets a request wait up to 6 s (2 s by default) before it sheds.
    lab = Lab.up(root / "lab", 3, model=True, router=True, secure=secure, workload={"router_queue_wait": 6.0})
    try:
        demo = Demo(lab, say)
        say(f"router {lab.router.url}: sending 30 embedding requests/s")

        async def drive() -> None:
            loop = asyncio.get_running_loop()
            load = loop.create_task(demo.gen.run(3600))
            try:
                await loop.run_in_executor(None, demo.run)  # the fault script blocks; load runs here
            finally:
                demo.gen.stop()
                await load
        asyncio.run(drive())
        result = build(demo.gen.samples, demo.faults)
    finally:
        if not keep:
            lab.down()
            shutil.rmtree(root, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo-report.json").write_text(json.dumps(result, indent=2) + "\n")
    plotted = plot(demo.gen.samples, demo.faults, out / "demo-timeline.png")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, out, plotted)
    return 1 if result["requests_failed"] or result["streams"]["broken"] else 0


def print_report(r: dict, out: Path, plotted: bool) -> None:
    print(f"\n{r['requests_sent']} requests, {r['requests_failed']} failed, "
          f"{r['requests_retried']} retried on another node; latency p50 {r['latency_ms']['p50']} ms, "
          f"p99 {r['latency_ms']['p99']} ms")
    head = f"{'fault':<14} {'detect ms':>9} {'takeover ms':>11} {'req':>5} {'failed':>6} {'retried':>7}  " \
           f"p50/p99 ms before | during | after"
    print(head)
    for f in r["faults"]:
        b, d, a = f["before"], f["during"], f["after"]
        fmt = lambda w: f"{w['p50_ms']}/{w['p99_ms']}"  # noqa: E731
        print(f"{f['name']:<14} {str(f['detection_ms'] if f['detection_ms'] is not None else '-'):>9} "
              f"{str(f['takeover_ms'] if f['takeover_ms'] is not None else '-'):>11} {d['requests']:>5} "
              f"{d['failed']:>6} {d['retried']:>7}  {fmt(b)} | {fmt(d)} | {fmt(a)}")
    s = r["streams"]
    print(f"streamed generations: {s['streams']}, {s['complete']} whole and exact, {s['resumed']} resumed "
          f"mid-stream, {s['broken']} broken")
    print(f"\nwrote {out / 'demo-report.json'}" + (f" and {out / 'demo-timeline.png'}" if plotted else
                                                   " (no plot: matplotlib is not installed)"))
