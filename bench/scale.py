"""Agents-only labs at several sizes, before (every agent hears every other:
`--full-mesh`) and after (the detection topology, vigil.core.topology), in
the same run: what an idle agent costs, what it hears, what etcd serves, how
many false suspicions an idle window brings, and how fast a leader's SIGKILL
is suspected.

Per size and mode: `Lab.up(N, no model)`, settle, then an idle window of
--idle seconds (CPU = utime+stime of every agent from /proc; heartbeat
packets = the agents' receive counters; etcd requests = the sum of
grpc_server_handled_total over the three members, watch events =
etcd_debugging_mvcc_events_total; false suspicions = peer_suspected events
in the window, where nothing was killed), then --kills SIGKILLs of the
leader's agent: detection = kill -> each survivor that watches the leader
records peer_suspected (all of them do: everyone watches the leader).

Usage: python bench/scale.py [--sizes 3,10,30,60] [--idle 60] [--kills 3] [--modes full,topology,topology-rt]
       [--timing product|lab] [--rack-size N] [--label NAME] [--append]
Writes bench/results/scale.{json,md}. Root not needed (loopback). `--append` adds
this run's rows to the file's (e.g. main before issue 24, run from its own tree:
PYTHONPATH=OLD/src python bench/scale.py --modes full --label main-c0039a9 --append).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, summary_ms, write  # noqa: E402

from vigil.cli.lab_cmd import lab_rack_size, lab_timing  # noqa: E402
from vigil.errors import StoreError, VigilError  # noqa: E402
from vigil.lab import Lab  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# mode -> (heartbeat.topology, heartbeat.realtime): `topology-rt` is what `vigil init` writes
# (the heartbeat thread at SCHED_FIFO 10, memory locked), where it also hands the detectors' looks.
MODES = {"full": ({"full_mesh_up_to": 1000}, None), "topology": ({}, None),
         "topology-rt": ({}, {"priority": 10, "lock_memory": True})}


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def etcd_counters(lab: Lab) -> tuple[float, float]:
    """(gRPC requests handled, watch events sent), summed over the members."""
    handled = events = 0.0
    for url in lab.etcd.endpoints:
        try:
            text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
        except OSError:
            continue
        handled += sum(float(v) for v in re.findall(r"^grpc_server_handled_total\{[^}]*\} (\S+)$", text, re.M))
        events += sum(float(v) for v in re.findall(r"^etcd_debugging_mvcc_events_total (\S+)$", text, re.M))
    return handled, events


def received(lab: Lab) -> tuple[int, int]:
    """(heartbeat packets received by all agents, peers watched by all agents)."""
    packets = watched = 0
    for n in lab.nodes:
        st = lab.agent_status(n.name, timeout=3) or {}
        packets += sum((st.get("heartbeat") or {}).get("received", {}).values())
        watched += len(st.get("peers") or {})
    return packets, watched


def suspicions(lab: Lab, since: float, peer: str | None = None) -> list[dict]:
    """The peer_suspected events since `since`. The whole event log is read: at 60
    agents on 2 cores etcd may take longer than the harness's 2 s to send it, and a
    slow read is asked again (a few times), not the end of the row."""
    for attempt in range(5):
        try:
            events = lab.events()
            break
        except StoreError:
            if attempt == 4:
                raise
    return [e for e in events if e["kind"] == "peer_suspected" and e.get("detected_at", 0) >= since
            and (peer is None or e.get("peer") == peer)]


def idle(lab: Lab, seconds: float) -> dict:
    pids = [n.agent_pid for n in lab.nodes]
    cpu0, (req0, ev0), (pk0, _), t0 = [cpu_seconds(p) for p in pids], etcd_counters(lab), received(lab), time.time()
    time.sleep(seconds)  # the window itself: nothing to wait for, we measure an idle cluster
    cpu1, (req1, ev1), (pk1, watched), t1 = [cpu_seconds(p) for p in pids], etcd_counters(lab), received(lab), time.time()
    span, n = t1 - t0, len(lab.nodes)
    per_agent = [(b - a) / span * 100 for a, b in zip(cpu0, cpu1)]
    return {"seconds": round(span, 1), "cpu_per_agent_pct": round(sum(per_agent) / n, 2),
            "cpu_per_agent_max_pct": round(max(per_agent), 2), "cpu_all_agents_pct": round(sum(per_agent), 1),
            "packets_per_node_s": round((pk1 - pk0) / span / n, 1), "peers_watched_per_node": round(watched / n, 1),
            "etcd_requests_s": round((req1 - req0) / span, 1), "etcd_watch_events_s": round((ev1 - ev0) / span, 1),
            "false_suspicions": len(suspicions(lab, t0))}


def kills(lab: Lab, count: int) -> dict:
    detect, first = [], []
    for _ in range(count):
        old, _token = lab.wait_for(lab.leader, 60, "a leader to kill")
        t0 = time.time()
        lab.kill_agent(old)
        lab.wait_for(lambda: (lambda c: c if c and c[0] != old else None)(lab.leader()), 30, "a new leader")
        survivors = len(lab.nodes) - 1
        seen = lab.wait_for(lambda: (lambda s: s if len({e["node"] for e in s}) >= survivors else None)(
            suspicions(lab, t0, old)), 30, "every survivor's suspicion of the killed leader",
            poll=0.5)  # each poll reads the whole event log: not every 20 ms
        times = sorted({e["node"]: e["detected_at"] - t0 for e in seen}.values())
        detect += times
        first.append(times[0])
        lab.start_agent(old)
        lab.wait_for(lab.ready, 120, f"{old} to rejoin")
    return {"detection_ms": summary_ms(detect), "first_detection_ms": summary_ms(first)}


def one(root: Path, n: int, mode: str, idle_s: float, kill_count: int, timing: str, rack_size: int) -> dict:
    started = time.monotonic()
    try:
        lab = Lab.up(root, n, timeout=60 + 3 * n, timing=lab_timing(timing, n),
                     workload={"topology": MODES[mode][0], "realtime": MODES[mode][1], "flap_threshold": 0,
                               "rack_size": rack_size})
    except VigilError as e:
        return {"nodes": n, "mode": mode, "started": False, "error": str(e)[:300]}
    try:
        up = time.monotonic() - started
        lab.wait_for(lab.ready, 60, "the lab settled")
        return {"nodes": n, "mode": mode, "started": True, "lab_up_s": round(up, 1), "kills": kill_count,
                **idle(lab, idle_s), **kills(lab, kill_count)}
    except Exception as e:  # noqa: BLE001 - a size that falls over is a result, not the end of the bench
        return {"nodes": n, "mode": mode, "started": True, "error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        lab.down()


def report(runs: list[dict], idle_s: float, kills_n: int) -> None:
    """Write bench/results/scale.{json,md} from these runs."""
    rows = [["nodes", "mode", "timing", "rack", "lab up (s)", "CPU/agent (% core)", "all agents (%)", "heartbeats rx/node/s",
             "peers watched/node", "etcd req/s", "etcd watch ev/s", "idle (s)", "false suspicions", "leader kills",
             "leader kill detection p50/p99 (ms)"]]
    for r in runs:
        if "error" in r or not r.get("started"):
            rows.append([r["nodes"], r["mode"], r.get("timing", "lab"), r.get("rack_size", 10),
                         "failed: " + r.get("error", "")[:80]]
                        + [""] * 10)
            continue
        d = r["detection_ms"]
        rows.append([r["nodes"], r["mode"], r.get("timing", "lab"), r.get("rack_size", 10), r["lab_up_s"], r["cpu_per_agent_pct"], r["cpu_all_agents_pct"],
                     r["packets_per_node_s"], r["peers_watched_per_node"], r["etcd_requests_s"],
                     r["etcd_watch_events_s"], r.get("seconds", ""), r["false_suspicions"],
                     r.get("kills") or round(d["n"] / max(1, r["nodes"] - 1)), f"{d['p50']} / {d['p99']}"])
    write("scale", {"idle_s": idle_s, "kills": kills_n, "runs": runs}, rows,
          "Agents only (no model servers), loopback, heartbeat 100 ms x 2 copies; timing `lab`: lease 2 s, "
          "keep-alive and decision cycle 0.5 s; `product`: the installed defaults (lease 10 s, keep-alive "
          "2.5 s, cycle 1 s). "
          "An idle window per row (its seconds in the idle column), then the leader SIGKILLs of the kills column "
          "(detection p99 over every survivor of every kill). `full`: every agent hears "
          "every other (heartbeat.topology.full_mesh_up_to 1000, the design before issue 24); `topology`: "
          "failure-domain meshes (rack: nodes per domain; 10 before this column existed) + 8 observers + the leader (defaults; a full mesh up to 16 members); "
          "`topology-rt`: the same with heartbeat.realtime as `vigil init` writes it (the heartbeat thread at SCHED_FIFO 10, "
          "memory locked), the thread stamping arrivals and handing the detectors' looks. A mode with a date in "
          "brackets is a later run of that row alone (its own idle window). "
          "Both with pair-key heartbeats and the per-(source, node) verification budget; `main-c0039a9`: the "
          "code before issue 24 (Ed25519 on every packet, one budget per source address), where it runs.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3,10,30,60")
    ap.add_argument("--modes", default="full,topology")
    ap.add_argument("--idle", type=float, default=60.0, help="idle window per size and mode (s)")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--label", help="name the rows after this instead of the mode")
    ap.add_argument("--timing", choices=("lab", "product"), default="product",
                    help="the agents' etcd session timers (as `vigil lab up --timing`); heartbeats are "
                         "100 ms in both")
    ap.add_argument("--append", action="store_true", help="keep the rows already in the results file")
    ap.add_argument("--rack-size", type=int, help="nodes per failure domain at every size (default: the "
                                                  "lab's, 10 up to 30 nodes and 5 above)")
    args = ap.parse_args()
    runs = []
    if args.append and (RESULTS / "scale.json").exists():
        runs = json.loads((RESULTS / "scale.json").read_text())["runs"]
    for n in [int(x) for x in args.sizes.split(",")]:
        for mode in args.modes.split(","):
            rack = lab_rack_size(args.rack_size, n)
            with tempfile.TemporaryDirectory(prefix=f"vigil-scale-{n}-{mode}-") as d:
                r = one(Path(d) / "lab", n, mode, args.idle, args.kills, args.timing, rack)
            r["mode"], r["timing"], r["rack_size"] = args.label or mode, args.timing, rack
            print(r, flush=True)
            runs.append(r)
    report(runs, args.idle, args.kills)
    return 0


if __name__ == "__main__":
    sys.exit(main())
