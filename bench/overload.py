"""Overload is not failure: offered load at 0.5x, 1x, 2x and 4x of the
cluster's measured capacity, through the Vigil router, through HAProxy (the
router bench's config) and directly to the servers, in one run on one lab of
3 real all-MiniLM-L6-v2 model servers.

1. Capacity first: a closed loop straight to the servers (2 clients per
   server, so each engine always has the next request waiting), requests of
   64 inputs: capacity = requests/s and inputs/s answered.
2. Per path and level: an open loop (fixed arrival rate, a new client
   connection budget large enough never to hold arrivals back) for
   `--seconds`; goodput = inputs of requests answered 200 within the window,
   per second; p50/p99 latency of those; 429s and how fast they came; any
   other failure; and false verdicts: any node that an agent called not
   ready or the router suspected, inhibited or found ineligible while it was
   only busy (a monitor polls every agent's /status and the router's status
   every 50 ms).
3. The same through Vigil at 2x with one server SIGSTOPped for 5 s: time
   until its agent calls it not ready, failures other than 429.
4. Retry storms (issue 26 #6; `--only storm` runs this alone): `--clients`
   closed-loop clients, each on its own keep-alive connection, sending
   requests of mixed batch sizes (1 to 128 inputs); on a 429 a *polite*
   client waits what retry-after-ms (else Retry-After) says and sends the
   same request again, a *storming* one sends it again at once. Each kind
   through Vigil and straight to the servers (client k to server k mod 3), same
   run: goodput (inputs answered 200 per second), 429s, and the router's own
   CPU (utime + stime of its process, as a share of one core). Targets:
   storming through Vigil >= 0.6x storming direct, polite >= 0.9x polite direct.

Targets (issue #8): at 2x and 4x, Vigil's goodput >= 90 % of capacity, zero
false verdicts, zero failures other than 429, every 429 within 50 ms.

Usage: python bench/overload.py [--seconds 12] [--only storm] [--clients 48] [--storm-seconds 20]
(root; needs haproxy). Writes bench/results/overload.{json,md} (sections 1-3)
and bench/results/overload_storm.{json,md} (section 4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_seconds, percentile, write  # noqa: E402
from router import start_haproxy  # noqa: E402

from vigil import procs  # noqa: E402
from vigil.lab import Lab  # noqa: E402

INPUTS = 64
LEVELS = (0.5, 1.0, 2.0, 4.0)


def payload(i: int) -> dict:
    return {"input": [f"request {i} sentence {k}: a pump station reports inlet pressure and flow"
                      for k in range(INPUTS)], "model": "all-MiniLM-L6-v2"}


@dataclass
class Result:
    start: float
    end: float
    status: int  # 0: no HTTP answer
    node: str = ""
    why: str = ""  # for a 429: which shedder answered


async def _one(http: aiohttp.ClientSession, url: str, i: int, out: list[Result]) -> None:
    t0 = time.monotonic()
    try:
        async with http.post(url + "/v1/embeddings", json=payload(i)) as r:
            body = await r.read()
            out.append(Result(t0, time.monotonic(), r.status, r.headers.get("X-Vigil-Node", ""),
                              _shedder(body) if r.status == 429 else ""))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        out.append(Result(t0, time.monotonic(), 0))


def _shedder(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    if message.startswith("engine full"):
        return "engine"
    return "router: waited" if "waited" in message else "router: on arrival"


async def closed_loop(urls: list[str], per_url: int, seconds: float) -> list[Result]:
    out: list[Result] = []
    end = time.monotonic() + seconds

    async def worker(url: str, k: int) -> None:
        i = k * 100000
        while time.monotonic() < end:
            await _one(http, url, i, out)
            i += 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(worker(u, k) for k, u in enumerate(urls * per_url)))
    return out


async def open_loop(urls: list[str], rate: float, seconds: float) -> list[Result]:
    """Arrivals at a fixed rate, round-robin over `urls`; nothing holds them back."""
    out: list[Result] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
        tasks, t0 = [], time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_one(http, urls[i % len(urls)], i, out)))
        await asyncio.gather(*tasks)
    return out


STORM_SIZES = (1, 8, 32, 64, 128)  # inputs per request, drawn per request


def retry_wait(headers) -> float:
    """What a polite client waits after a 429 (OpenAI's clients read retry-after-ms first)."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        try:
            return float(headers.get(name, "")) * scale
        except ValueError:
            continue
    return 1.0


async def storm_clients(urls: list[str], clients: int, seconds: float, polite: bool) -> dict:
    """`clients` closed-loop clients (client k sends to urls[k % len(urls)]), each on its
    own connection; a 429 is retried after its Retry-After (polite) or at once."""
    good = shed = other = 0
    inputs_ok = 0
    end = time.monotonic() + seconds

    async def client(k: int) -> None:
        nonlocal good, shed, other, inputs_ok
        rng = random.Random(k)
        url = urls[k % len(urls)] + "/v1/embeddings"
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
            i = k * 1_000_000
            while time.monotonic() < end:
                n = rng.choice(STORM_SIZES)
                body = {"input": [f"client {k} request {i} sentence {j}: inlet pressure and flow"
                                  for j in range(n)], "model": "all-MiniLM-L6-v2"}
                i += 1
                while time.monotonic() < end:  # the same request until it is answered
                    try:
                        async with http.post(url, json=body) as r:
                            await r.read()
                            status, headers = r.status, r.headers
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                        other += 1
                        break
                    if status == 200:
                        if time.monotonic() <= end:
                            good += 1
                            inputs_ok += n
                        break
                    if status != 429:
                        other += 1
                        break
                    shed += 1
                    if polite:
                        await asyncio.sleep(min(retry_wait(headers), max(0.0, end - time.monotonic())))

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"answered": good, "goodput_inputs_s": round(inputs_ok / seconds, 1), "shed_429": shed,
            "other_failures": other}


def storm_section(lab: Lab, clients: int, seconds: float) -> dict:
    servers = [n.server_url for n in lab.nodes]
    runs: dict[str, dict] = {}
    for kind in ("storming", "polite"):
        for path, urls in (("vigil", [lab.router.url]), ("direct", servers)):
            wait_idle(lab)
            cpu0 = cpu_seconds(lab.router.pid)
            r = asyncio.run(storm_clients(urls, clients, seconds, kind == "polite"))
            r["router_cpu_pct"] = round(100 * (cpu_seconds(lab.router.pid) - cpu0) / seconds, 1)
            runs[f"{kind} {path}"] = r
            print(f"storm {kind} {path}: {r}", flush=True)
    for kind in ("storming", "polite"):
        direct = runs[f"{kind} direct"]["goodput_inputs_s"]
        runs[f"{kind} vigil"]["of_direct"] = round(runs[f"{kind} vigil"]["goodput_inputs_s"] / direct, 2) \
            if direct else None
    paced = _paced(lab.router.admin_url)
    return {"clients": clients, "seconds": seconds, "sizes": STORM_SIZES, "runs": runs,
            "router_paced": paced}


def write_storm(doc: dict) -> None:
    rows = [["clients", "path", "goodput inputs/s", "of direct (target)", "429s", "other failures",
             "router CPU % of a core"]]
    for name, r in doc["runs"].items():
        kind, path = name.split()
        target = {"storming": "0.6", "polite": "0.9"}[kind]
        rows.append([kind, path, r["goodput_inputs_s"],
                     f"{r['of_direct']} (>= {target})" if path == "vigil" else "-",
                     r["shed_429"], r["other_failures"], r["router_cpu_pct"]])
    notes = (f"{doc['clients']} closed-loop clients, each on its own keep-alive connection, "
             f"{doc['seconds']:g} s per run, requests of {', '.join(map(str, doc['sizes']))} inputs drawn at "
             "random; a polite client waits the 429's retry-after-ms (else Retry-After), a storming one "
             "sends the same request again at once. Direct: client k to server k mod 3. Same lab, same "
             "run; 3 model servers, 3 agents, 3 etcd members, the router and the clients share 2 cores.")
    write("overload_storm", doc, rows, notes)


class Monitor:
    """Polls agents and the router: records every moment a node looked not ready,
    suspected, inhibited or ineligible."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.false: list[dict] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Monitor":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for n in self.lab.nodes:
                st = self.lab.agent_status(n.name, 1.0) or {}
                inf = st.get("inference") or {}
                if inf and not inf.get("ready"):
                    self.false.append({"by": "agent", "node": n.name, "verdict": inf.get("verdict"),
                                       "reason": inf.get("reason")})
            rs = _get(self.lab.router.admin_url + "/_vigil/status")
            for name, b in (rs or {}).get("backends", {}).items():
                if not b["eligible"] or not b["alive"]:
                    self.false.append({"by": "router", "node": name, "why": b["why_not"]})


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def _paced(admin_url: str) -> float | None:
    """The router's vigil_router_paced_total."""
    try:
        with urllib.request.urlopen(admin_url + "/metrics", timeout=1.0) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("vigil_router_paced_total "):
                    return float(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def wait_idle(lab: Lab) -> None:
    lab.wait_for(lambda: all((_get(n.server_url + "/v2/load") or {}).get("pending") == 0
                             for n in lab.nodes), 120, "every engine idle")


def summarize(res: list[Result], t0: float, seconds: float, shed_ms: list[float]) -> dict:
    ok = [r for r in res if r.status == 200 and r.end <= t0 + seconds]
    lat = [(r.end - r.start) * 1000 for r in res if r.status == 200]
    r1 = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"sent": len(res), "ok": sum(r.status == 200 for r in res),
            "goodput_inputs_s": round(len(ok) * INPUTS / seconds, 1),
            "p50_ms": r1(percentile(lat, 50)), "p99_ms": r1(percentile(lat, 99)),
            "shed_429": len(shed_ms), "shed_p99_ms": r1(percentile(shed_ms, 99)),
            "shed_max_ms": r1(max(shed_ms) if shed_ms else None),
            "other_failures": sum(r.status not in (200, 429) for r in res),
            "shed_by": {w: sum(r.why == w for r in res if r.status == 429)
                        for w in sorted({r.why for r in res if r.status == 429})},
            "failure_codes": sorted({r.status for r in res if r.status not in (200, 429)})}


def run_level(lab: Lab, urls: list[str], rate: float, seconds: float) -> dict:
    wait_idle(lab)
    with Monitor(lab) as mon:
        t0 = time.monotonic()
        res = asyncio.run(open_loop(urls, rate, seconds))
    shed_ms = [(r.end - r.start) * 1000 for r in res if r.status == 429]
    return {**summarize(res, t0, seconds, shed_ms), "false_verdicts": len(mon.false),
            "false_examples": mon.false[:3]}


def hang_test(lab: Lab, rate: float, seconds: float) -> dict:
    wait_idle(lab)
    victim = lab.nodes[2].name
    found: dict[str, float] = {}

    def fault() -> None:
        time.sleep(seconds / 4)  # bench pacing only: the fault lands mid-load
        lab.signal_server(victim, signal.SIGSTOP)
        t = time.monotonic()
        try:
            lab.wait_for(lambda: (lab.agent_status(victim) or {}).get("inference", {}).get("ready")
                         is False, 10, "the agent to call the frozen engine not ready", poll=0.005)
            found["agent_ms"] = (time.monotonic() - t) * 1000
            lab.wait_for(lambda: not ((_get(lab.router.admin_url + "/_vigil/status") or {})
                                      .get("backends", {}).get(victim, {}).get("eligible", True)),
                         10, "the router to stop routing to it", poll=0.005)
            found["router_ms"] = (time.monotonic() - t) * 1000
            time.sleep(5)
        finally:
            lab.signal_server(victim, signal.SIGCONT)
    th = threading.Thread(target=fault)
    th.start()
    t0 = time.monotonic()
    res = asyncio.run(open_loop([lab.router.url], rate, seconds))
    th.join()
    shed_ms = [(r.end - r.start) * 1000 for r in res if r.status == 429]
    reason = (lab.agent_status(victim) or {}).get("inference", {})
    return {**summarize(res, t0, seconds, shed_ms), "victim": victim,
            "detected_by_agent_ms": round(found.get("agent_ms", -1), 1),
            "router_stopped_ms": round(found.get("router_ms", -1), 1),
            "events": [e["cause"] for e in lab.events() if e["node"] == victim
                       and e["kind"] == "inference_not_ready"][-1:], "after": reason.get("verdict")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--only", choices=("storm",), help="run only the retry-storm section")
    ap.add_argument("--clients", type=int, default=48, help="clients in the retry-storm section")
    ap.add_argument("--storm-seconds", type=float, default=20.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vigil-overload-"))
    lab = Lab.up(root / "lab", 3, model=True, router=True)
    ha = None
    try:
        lab.wait_for(lab.ready, 120, "every node ready")
        write_storm(storm_section(lab, args.clients, args.storm_seconds))
        if args.only == "storm":
            return 0
        ha, ha_url = start_haproxy(lab, root)
        servers = [n.server_url for n in lab.nodes]
        wait_idle(lab)
        cap = asyncio.run(closed_loop(servers, 2, args.seconds))
        ok = [r for r in cap if r.status == 200]
        capacity = len(ok) / args.seconds
        print(f"capacity: {capacity:.2f} req/s = {capacity * INPUTS:.0f} inputs/s", flush=True)
        paths = {"vigil": [lab.router.url], "haproxy": [ha_url], "direct": servers}
        levels: dict[str, dict] = {}
        for level in LEVELS:
            for path, urls in paths.items():
                r = run_level(lab, urls, capacity * level, args.seconds)
                levels.setdefault(str(level), {})[path] = r
                print(f"{level}x {path}: {json.dumps({k: v for k, v in r.items() if k != 'false_examples'})}",
                      flush=True)
        hang = hang_test(lab, capacity * 2, args.seconds)
        print(f"hang at 2x: {hang}", flush=True)
    finally:
        if ha:
            procs.stop(ha.pid, "haproxy")
        lab.down()
    doc = {"capacity_req_s": round(capacity, 2), "capacity_inputs_s": round(capacity * INPUTS, 1),
           "inputs_per_request": INPUTS, "seconds": args.seconds, "levels": levels, "hang_at_2x": hang}
    rows = [["level", "path", "offered req/s", "goodput inputs/s (% of capacity)", "p50 / p99 ms",
             "429s (p99 / max ms)", "other failures", "false verdicts"]]
    for level, by_path in levels.items():
        for path, r in by_path.items():
            pct = 100 * r["goodput_inputs_s"] / (capacity * INPUTS)
            rows.append([f"{level}x", path, f"{capacity * float(level):.1f}",
                         f"{r['goodput_inputs_s']} ({pct:.0f} %)", f"{r['p50_ms']} / {r['p99_ms']}",
                         f"{r['shed_429']} ({r['shed_p99_ms']} / {r['shed_max_ms']})",
                         f"{r['other_failures']} {r['failure_codes'] or ''}".strip(), r["false_verdicts"]])
    notes = (f"Capacity (closed loop, direct, {INPUTS} inputs a request): {capacity:.2f} req/s = "
             f"{capacity * INPUTS:.0f} inputs/s.\n\nOne server SIGSTOPped for 5 s at 2x through Vigil: "
             f"its agent called it not ready after {hang['detected_by_agent_ms']} ms, the router stopped "
             f"routing to it after {hang['router_stopped_ms']} ms; {hang['other_failures']} failures "
             f"other than 429, {hang['shed_429']} shed, goodput {hang['goodput_inputs_s']} inputs/s. "
             f"Cause: {hang['events']}")
    write("overload", doc, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
