"""The Vigil router, HAProxy alone and HAProxy driven by Vigil side by side
on the same lab backends (3 real all-MiniLM-L6-v2 model servers), in one run:

1. added latency p50/p99 over a direct call (GET /v1/models, sequential,
   keep-alive), per proxy;
2. maximum requests/s through each (wrk, GET /v1/models), and the ratio;
3. failed client requests under steady embedding load (20 req/s) during the
   same fault set, N times each: SIGKILL of a backend node; SIGSTOP of a
   model server for 10 s; a model server killed and answering 503 while the
   agent restarts it; a node 20x slower for 6 s.

HAProxy: `inter 100ms fall 2 rise 2`, `retries 3`, `option redispatch`,
`retry-on all-retryable-errors`, leastconn, health check on
/v2/health/ready. Every proxy uses a 3 s per-attempt server timeout.
HAProxy driven by Vigil: the same config plus a stats socket at admin level;
`vigil haproxy drive` (a real process, on its own heartbeat port among the
agents' observers) sets its servers ready/drain/maint (bench/router_haproxy.py).

Usage: python bench/router.py [--trials 10]   (root; needs haproxy and wrk)
Writes bench/results/router.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, write  # noqa: E402
from router_haproxy import DrivenHaproxy, plan_driver  # noqa: E402

from vigil import procs  # noqa: E402
from vigil.lab import Lab  # noqa: E402
from vigil.lab.load import LoadGenerator  # noqa: E402

HAPROXY_CFG = """global
    maxconn 4096
{stats}defaults
    mode http
    timeout connect 500ms
    timeout client 30s
    timeout server 3s
    timeout check 1s
    retries 3
    option redispatch
    retry-on all-retryable-errors
    option http-buffer-request
frontend fe
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    balance leastconn
    option httpchk GET /v2/health/ready
    http-check expect status 200
{servers}
"""


def haproxy_cfg(lab: Lab, port: int, backend: str = "be", stats: str = "") -> str:
    """The one HAProxy config of this bench (servers named as the nodes)."""
    servers = "\n".join(f"    server {n.name} {n.server_url.split('//')[1]} check inter 100ms fall 2 rise 2"
                        for n in lab.nodes)
    return HAPROXY_CFG.format(port=port, backend=backend, servers=servers, stats=stats)


def start_haproxy(lab: Lab, root: Path) -> tuple[subprocess.Popen, str]:
    port = procs.free_ports(1)[0]
    cfg = root / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(lab, port))
    p = procs.spawn(["haproxy", "-db", "-f", str(cfg)], root / "haproxy.log")
    url = f"http://127.0.0.1:{port}"
    lab.wait_for(lambda: _ok(url + "/v1/models"), 15, "haproxy up")
    return p, url


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def _sequential(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.get(url) as r:
                await r.read()
            out.append(time.perf_counter() - t0)
    return out


def latency(direct: str, proxies: dict[str, str], n: int = 1000) -> dict:
    base = asyncio.run(_sequential(direct + "/v1/models", n))
    res = {"direct": {"p50_ms": round(percentile(base, 50) * 1000, 3),
                      "p99_ms": round(percentile(base, 99) * 1000, 3)}}
    for name, url in proxies.items():
        via = asyncio.run(_sequential(url + "/v1/models", n))
        res[name] = {"p50_ms": round(percentile(via, 50) * 1000, 3), "p99_ms": round(percentile(via, 99) * 1000, 3),
                     "added_p50_ms": round((percentile(via, 50) - percentile(base, 50)) * 1000, 3),
                     "added_p99_ms": round((percentile(via, 99) - percentile(base, 99)) * 1000, 3)}
    return res


def throughput(url: str, seconds: int = 8) -> float:
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", url + "/v1/models"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if not m or bad:
        raise RuntimeError(f"wrk through {url}: {out}")
    return float(m.group(1))


class Trial:
    """One fault under steady load through one proxy; returns (sent, failed).
    `driven`: the proxy is the driven HAProxy (the SIGKILL is timed to maint;
    the trial ends once the driver has made every server ready again)."""

    def __init__(self, lab: Lab, url: str, fault: str, victim: str, driven: DrivenHaproxy | None = None):
        self.lab, self.fault, self.victim, self.driven = lab, fault, victim, driven
        self.gen = LoadGenerator(url + "/v1/embeddings", rate=20)

    def after(self, n: int) -> None:
        self.lab.wait_for(lambda: len(self.gen.samples) >= n, 120, f"{n} answers")

    def inject(self) -> None:
        lab, v = self.lab, self.victim
        try:
            self.after(40)
            if self.fault == "sigkill_node":
                if self.driven:
                    self.driven.watch(v)
                lab.kill_node(v)
                self.after(len(self.gen.samples) + 80)
            elif self.fault == "sigstop_server_10s":
                lab.signal_server(v, signal.SIGSTOP)
                t0 = time.monotonic()
                lab.wait_for(lambda: time.monotonic() - t0 >= 10, 20, "10 s hang")
                lab.signal_server(v, signal.SIGCONT)
                self.after(len(self.gen.samples) + 40)
            elif self.fault == "restart_503":
                lab.signal_server(v, signal.SIGKILL)  # the agent restarts it: refused, then 503 while loading
                ready = lambda: (lab.agent_status(v) or {}).get("inference", {}).get("ready")  # noqa: E731
                # The window must really happen: first not ready (killed, then loading), then ready.
                lab.wait_for(lambda: ready() is False, 30, "the killed server seen not ready")
                lab.wait_for(ready, 120, "the restarted server ready")
                self.after(len(self.gen.samples) + 40)
            elif self.fault == "slow_20x":
                _faults(lab, v, {"slowdown": 20})
                t0 = time.monotonic()
                lab.wait_for(lambda: time.monotonic() - t0 >= 6, 20, "6 s slow")
                _faults(lab, v, {"slowdown": 1})
                self.after(len(self.gen.samples) + 40)
        finally:
            self.gen.stop()

    def run(self) -> tuple[int, int]:
        t = threading.Thread(target=self.inject)
        t.start()
        samples = asyncio.run(self.gen.run(300))
        t.join()
        if self.fault == "sigkill_node":
            self.lab.start_agent(self.victim)
        self.lab.wait_for(self.lab.ready, 180, "the lab whole again")
        if self.driven:
            self.driven.join()
            self.driven.settle()
        return len(samples), sum(s.status != 200 for s in samples)


def _faults(lab: Lab, node: str, body: dict) -> None:
    req = urllib.request.Request(lab.node(node).server_url + "/_vigil/faults", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


FAULTS = ("sigkill_node", "sigstop_server_10s", "restart_503", "slow_20x")


PROXIES = ("vigil", "haproxy", "haproxy_driven")


def run_faults(lab: Lab, urls: dict[str, str], driven: DrivenHaproxy, trials: int) -> dict:
    """Every fault, `trials` times, through every proxy in turn (same victim per round)."""
    faults: dict = {f: {name: {"sent": 0, "failed": 0, "trials": []} for name in urls} for f in FAULTS}
    for fault in FAULTS:
        for i in range(trials):
            for name, url in urls.items():
                victim = lab.nodes[i % len(lab.nodes)].name
                trial = Trial(lab, url, fault, victim, driven if name == "haproxy_driven" else None)
                sent, failed = trial.run()
                r = faults[fault][name]
                r["sent"] += sent
                r["failed"] += failed
                r["trials"].append(failed)
                print(f"{fault} #{i + 1} via {name} ({victim}): {failed}/{sent} failed", flush=True)
    return faults


def previous_faults() -> tuple[dict, int, dict]:
    """--speed-only: the fault results (and driver timings) on file."""
    previous = json.loads((Path(__file__).parent / "results" / "router.json").read_text())
    return previous["faults"], previous["trials"], previous.get("driver", {})


def measure(args: argparse.Namespace, root: Path) -> dict:
    lab = Lab.create(root / "lab", 3, model=True, router=True)
    driver_cfg = plan_driver(lab, root)  # before the agents start: they read their observers once
    lab.start()
    driven = DrivenHaproxy(lab, root, driver_cfg)
    ha = None
    try:
        ha, ha_url = start_haproxy(lab, root)
        urls = {"vigil": lab.router.url, "haproxy": ha_url,
                "haproxy_driven": driven.start(lambda port, **kw: haproxy_cfg(lab, port, **kw))}
        lat = latency(lab.nodes[0].server_url, urls)
        print("latency", lat, flush=True)
        tput = {name: throughput(url) for name, url in urls.items()}
        print("throughput", tput, flush=True)
        if args.speed_only:
            faults, args.trials, drv = previous_faults()
        else:
            faults = run_faults(lab, urls, driven, args.trials)
            drv = {"sigkill_maint_ms": driven.maint_ms, "sigkill_first_out": driven.first}
    finally:
        driven.stop()
        if ha:
            procs.stop(ha.pid, "haproxy")
        lab.down()
    return {"trials": args.trials, "latency": lat, "throughput_rps": tput,
            "throughput_ratio": round(tput["vigil"] / tput["haproxy"], 3),
            "throughput_ratio_driven": round(tput["haproxy_driven"] / tput["haproxy"], 3),
            "faults": faults, "driver": drv}


def maint_row(drv: dict) -> list:
    ms = [x for x in drv.get("sigkill_maint_ms", []) if x is not None]
    missed = len(drv.get("sigkill_maint_ms", [])) - len(ms)
    first = drv.get("sigkill_first_out", [])
    cell = (f"p50 {percentile(ms, 50):.0f}, max {max(ms):.0f}" if ms else "never") + \
        (f", {missed} never" if ms and missed else "") + \
        f"; driver first in {first.count('driver')} of {len(first)}"
    return ["SIGKILLed server in maint, ms after the kill (and who took it out first)", "-", "-", cell]


def report(doc: dict) -> None:
    lat, tput, n = doc["latency"], doc["throughput_rps"], doc["trials"]
    table = [["measure", "Vigil router", "HAProxy 2.6", "HAProxy 2.6 driven by Vigil"],
             ["added latency p50 (ms)", *(lat[p]["added_p50_ms"] for p in PROXIES)],
             ["added latency p99 (ms)", *(lat[p]["added_p99_ms"] for p in PROXIES)],
             ["max requests/s (GET /v1/models, wrk -c64)", *(round(tput[p]) for p in PROXIES)],
             ["throughput relative to HAProxy alone", doc["throughput_ratio"], 1.0, doc["throughput_ratio_driven"]]]
    for f in FAULTS:
        r = doc["faults"][f]
        table.append([f"failed requests: {f} (x{n})",
                      *(f"{r[p]['failed']} of {r[p]['sent']}" if p in r else "-" for p in PROXIES)])
    if doc["driver"]:
        table.append(maint_row(doc["driver"]))
    write("router", doc, table, notes=NOTES)


NOTES = (
    "Same 3 backends (real all-MiniLM-L6-v2 servers, one per lab node), same load (20 embedding "
    "requests/s, no client retries), same faults and victims through each proxy in turn. Direct baseline: "
    "node n1's server. The machine has 2 cores shared by the client, the three proxies, the driver, 3 model "
    "servers, 3 agents and 3 etcd members, so absolute throughput is low and is the same handicap for all.\n\n"
    "HAProxy driven by Vigil runs the same config as HAProxy alone (same 100 ms checks on /v2/health/ready, "
    "fall 2 rise 2, retries 3, redispatch, 3 s server timeout), plus `stats socket ... level admin`, with the "
    "backend named `vigil_inference` and servers named as the nodes. `vigil haproxy drive --socket` (a real "
    "process, following etcd and the agents' heartbeats on its own observer port, like the router) is the "
    "single owner of each server's admin state (maint/drain/ready); HAProxy's own checks stay on as a "
    "backstop: they can still mark a server DOWN, never bring a maint one back. (`vigil haproxy config` "
    "renders slower checks, 2 s x 3 against the agent's /ready, because the driver is the fast path; here "
    "the checks are kept as fast as HAProxy alone's so that the driver is the only difference.) The maint "
    "row polls `show servers state` every 5 ms from just before the SIGKILL; \"first\" is which took the "
    "server out first in HAProxy's log: the driver (\"going DOWN for maintenance\") or HAProxy's checks.")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--speed-only", action="store_true",
                   help="re-measure latency and throughput only; keep the fault results on file")
    args = p.parse_args()
    report(measure(args, Path(tempfile.mkdtemp(prefix="vigil-bench-router-"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
