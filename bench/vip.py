"""keepalived (Debian package, VRRPv3) against Vigil, keeping one VIP on the
same three-node namespace topology (vigil.lab.netns.NetTopology), in one run.

For each system, with the client (bench/vip_probe.py) sending GET
http://VIP:8080/ every 10 ms to a responder in every node namespace:
- kills: N times, at a random moment, the VIP holder dies as a whole node (SIGKILL of the
  system's processes + its switch port down); measured: time from the kill
  until the client is answered by another node (p50/p99/max), the largest gap
  between answers, and dual-holder observations from the kill until 1 s after
  the client is answered again;
- partition: the holder cut off from the other nodes (not from the client)
  for --partition-s; dual-holder observations from the cut until one holder
  is left after the heal, and the time after that until the client is
  answered by that holder;
- agent-only kill: SIGKILL of the holder's HA daemon, the link up, for
  --agent-hold-s; dual-holder observations.
A dual-holder observation is an `ip addr` sample (20 ms) with >= 2 nodes
holding the VIP on a live link, or an ARP sample (100 ms, from the client)
with >= 2 MACs answering.

Systems: keepalived-1 and keepalived-0.1 (advert_int 1 s / 0.1 s), vigil
(default 100 ms heartbeat, no fencing), vigil-fencing, vigil-fencing-fast
(the fast detection profile), and each again with etcd on namespaces of its
own (...-etcd-apart), from vigil_systems(net, args) in bench/vip_vigil.py,
which returns them without starting anything.

The topology is made in the root namespace; the bench then runs itself again
inside the client namespace (--inner), and afterwards kills whatever is left
in its namespaces and deletes them.

Usage (root): python bench/vip.py [--kills 20] [--systems keepalived-1,keepalived-0.1,vigil,...]
Writes bench/results/OUT.{json,md} (--out, default vip).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import summary_ms, write  # noqa: E402
from vip_probe import (ADDR, NODES, PORT, TOPOLOGY, VIP, HolderWatch, Probe, VipSystem,  # noqa: E402
                       name, node_up)

from vigil import procs  # noqa: E402
from vigil.lab.netns import NetTopology  # noqa: E402

SYSTEMS = ("keepalived-1", "keepalived-0.1", "vigil", "vigil-fencing", "vigil-etcd-apart",
           "vigil-fencing-etcd-apart", "vigil-fencing-fast", "vigil-fencing-fast-etcd-apart")
ROOT = Path(__file__).resolve().parents[1]
SETTLE = 1.0  # s still watched for dual holders after the client is answered again


def log(msg: str) -> None:
    print(f"[vip {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--kills", type=int, default=20, help="holder kills per system (default 20)")
    a.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS))
    a.add_argument("--out", default="vip", help="result name under bench/results (default vip)")
    a.add_argument("--partition-s", type=float, default=10.0, help="how long the holder is cut off")
    a.add_argument("--agent-hold-s", type=float, default=6.0, help="how long the holder's daemon stays dead")
    a.add_argument("--seed", type=int, default=1, help="for the random moments of the kills")
    a.add_argument("--dir", help="work directory (default: a new temporary one, removed on success)")
    a.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a.add_argument("--tag", help=argparse.SUPPRESS)
    args = a.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        a.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    return args


def load_vigil():
    """vigil_systems from bench/vip_vigil.py; a clear exit if it is not there."""
    try:
        import vip_vigil
    except ModuleNotFoundError as e:
        if e.name != "vip_vigil":
            raise
        raise SystemExit("bench/vip.py: the vigil systems need bench/vip_vigil.py (vigil_systems(net, args)), "
                         "which does not exist yet; try --systems keepalived-1,keepalived-0.1") from None
    return vip_vigil.vigil_systems


def make_systems(net: NetTopology, args: argparse.Namespace) -> dict[str, VipSystem]:
    from vip_keepalived import KeepalivedCluster

    made: dict[str, VipSystem] = {}
    if any(k.startswith("vigil") for k in args.systems):
        made.update(load_vigil()(net, args))
    for key in args.systems:
        if key.startswith("keepalived-"):
            made[key] = KeepalivedCluster(net, VIP, float(key.split("-", 1)[1]), Path(args.dir))
    return {k: made[k] for k in args.systems}


# --- the trials ------------------------------------------------------------------

def kill_trial(system: VipSystem, node: int, watch: HolderWatch, probe: Probe) -> dict:
    """Whole-node death of the holder: kill -> first answer from another node."""
    t0 = time.monotonic()
    system.kill_node(node)
    t1 = probe.wait_answer(lambda n: n != name(node), t0, 60)
    if t1 is None:
        raise RuntimeError(f"no answer from another node within 60 s of killing {name(node)}")
    time.sleep(SETTLE)  # a fixed watch window, not a poll
    t2 = time.monotonic()
    system.revive_node(node)
    t3 = time.monotonic()
    return {"node": name(node), "killed_at": round(time.time() - (time.monotonic() - t0), 4),
            "outage_s": round(t1 - t0, 4),
            "gap_s": round(probe.largest_gap(t0 - 1, t2) or 0, 4),
            "answered_by": probe.answers(t1, t1)[0][1], "dual": watch.dual(t0, t2),
            "revive_s": round(t3 - t2, 2), "revive_dual": watch.dual(t2, t3)}


def partition_trial(net: NetTopology, node: int, watch: HolderWatch, probe: Probe, hold: float) -> dict:
    """The holder cut off from the other nodes (not from the client) for `hold` s; then healed."""
    others = [j for j in range(1, net.nodes + 1) if j != node]  # the etcd namespaces too
    t0 = time.monotonic()
    net.partition([node], others)
    time.sleep(hold)  # the partition lasts this long, whatever happens
    t1 = time.monotonic()
    net.heal()
    holder = watch.stable_holder(timeout=60)
    t2 = time.monotonic()
    t3 = probe.wait_answer(lambda n: n == name(holder), t2, 30)
    second = watch.first(lambda h: len(h) >= 2, t0, t1)
    single = watch.first(lambda h: len(h) < 2, t1, t2)
    return {"node": name(node), "dual": watch.dual(t0, t2), "answers_during": probe.by_node(t0, t1),
            "second_holder_after_s": None if second is None else round(second - t0, 3),
            "one_holder_after_heal_s": None if single is None else round(single - t1, 3),
            "holder_after": name(holder),
            "client_reaches_holder_after_s": None if t3 is None else round(t3 - t2, 3)}


def agent_trial(system: VipSystem, node: int, watch: HolderWatch, probe: Probe, hold: float) -> dict:
    """SIGKILL of the holder's HA daemon only (link up) for `hold` s; then restarted."""
    t0 = time.monotonic()
    system.kill_daemon(node)
    time.sleep(hold)  # the daemon stays dead this long
    t1 = time.monotonic()
    system.revive_daemon(node)
    t2 = time.monotonic()
    second = watch.first(lambda h: len(h) >= 2, t0, t1)
    return {"node": name(node), "dual": watch.dual(t0, t1), "answers_during": probe.by_node(t0, t1),
            "second_holder_after_s": None if second is None else round(second - t0, 3),
            "revive_s": round(t2 - t1, 2), "revive_dual": watch.dual(t1, t2)}


def kills(system: VipSystem, watch: HolderWatch, probe: Probe, n: int, seed: int) -> dict:
    """n kill trials, each at a random moment (0-1 s after the holder has been
    stable for 1 s): a crash falls at any phase of the advert/heartbeat timers,
    not just after the revived holder's first advertisement."""
    rng, trials = random.Random(seed), []
    for k in range(n):
        node = watch.stable_holder(timeout=60, since=time.monotonic())
        time.sleep(rng.uniform(0, 1))  # the random moment of the crash
        if watch.stable_holder(hold=0, timeout=0) != node:
            raise RuntimeError(f"the VIP left {name(node)} by itself")
        trials.append(kill_trial(system, node, watch, probe))
        t = trials[-1]
        log(f"  kill {k + 1}/{n} of {t['node']}: answered by {t['answered_by']} after "
            f"{t['outage_s'] * 1000:.0f} ms, dual {t['dual']['dual']}, revived in {t['revive_s']} s")
    return {"outage": summary_ms([t["outage_s"] for t in trials]), "gap": summary_ms([t["gap_s"] for t in trials]),
            "dual": sum(t["dual"]["dual"] for t in trials),
            "revive_dual": sum(t["revive_dual"]["dual"] for t in trials), "trials": trials}


def run_system(key: str, system: VipSystem, net: NetTopology, watch: HolderWatch, probe: Probe,
               args: argparse.Namespace) -> dict:
    """start, the kills, the partition, the agent-only kill, stop; an error is recorded, not raised."""
    out: dict = {"name": system.name}
    log(f"{key}: starting {system.name}")
    t = started = time.monotonic()
    try:
        system.start()
        started = time.monotonic()
        out["start_s"] = round(started - t, 2)
        out["kill"] = kills(system, watch, probe, args.kills, args.seed)
        out["partition"] = partition_trial(net, watch.stable_holder(timeout=60), watch, probe, args.partition_s)
        log(f"  partition: {summarize(out['partition'])}")
        out["agent_kill"] = agent_trial(system, watch.stable_holder(timeout=60), watch, probe, args.agent_hold_s)
        log(f"  agent-only kill: {summarize(out['agent_kill'])}")
    except Exception:
        out["error"] = traceback.format_exc()
        log(f"{key} failed:\n{out['error']}")
    finally:
        out["dual_total"] = watch.dual(started, time.monotonic())  # every sample from started to stop
        system.stop()
        reset(net)
    return out


def summarize(trial: dict) -> str:
    return (f"dual {trial['dual']['dual']} (ip {trial['dual']['ip_dual']}, arp {trial['dual']['arp_dual']}), "
            f"second holder after {trial['second_holder_after_s']} s, answers {trial['answers_during']}")


def reset(net: NetTopology) -> None:
    """Between systems: no VIP anywhere, every port up, no partition, no cached MAC for the VIP."""
    net.heal()
    for i in range(1, net.nodes + 1):
        node_up(net, i)
    subprocess.run(["ip", "neigh", "flush", "to", ADDR], capture_output=True, timeout=20)


# --- results -------------------------------------------------------------------------

def report(args: argparse.Namespace, results: dict) -> bool:
    """Write OUT.{json,md}; True when every system ran without error."""
    ms = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    table = [["system", "kill outage p50 ms", "p99 ms", "max ms", "n", "largest gap p99 ms",
              "dual-holder samples: kills (+ reviving)", "partition", "agent-only kill (+ reviving)",
              "whole run"]]
    for r in results.values():
        k, p, a = r.get("kill", {}), r.get("partition", {}), r.get("agent_kill", {})
        o, g = k.get("outage", {}), k.get("gap", {})
        table.append([r["name"] + (" (error)" if "error" in r else ""), ms(o.get("p50")), ms(o.get("p99")),
                      ms(o.get("max")), o.get("n", 0), ms(g.get("p99")),
                      f"{k['dual']} (+{k['revive_dual']})" if k else "-", p.get("dual", {}).get("dual", "-"),
                      f"{a['dual']['dual']} (+{a['revive_dual']['dual']})" if a else "-",
                      r.get("dual_total", {}).get("dual", "-")])
    targets = targets_met(results)
    notes = [f"{args.kills} kills per system; VIP {VIP}; client GET :{PORT} every 10 ms (100 ms deadline), "
             f"holders sampled every 20 ms (ip addr), ARP every 100 ms; partition {args.partition_s:g} s, "
             f"agent-only kill held {args.agent_hold_s:g} s. A dual-holder sample is an ip-addr sample with "
             ">= 2 holders on a live link or an ARP sample with >= 2 MACs answering; \"whole run\" counts "
             "every sample from the system's start to its stop."]
    notes += [details(r) for r in results.values() if "partition" in r and "agent_kill" in r]
    notes += [f"{t}: {'met' if ok else 'NOT met'}" for t, ok in targets.items()]
    write(args.out, {"vip": VIP, "kills": args.kills, "systems": results, "targets": targets},
          table, "\n\n".join(notes))
    return not any("error" in r for r in results.values())


def details(r: dict) -> str:
    p, a = r["partition"], r["agent_kill"]
    return (f"{r['name']}: partition: second holder {p['second_holder_after_s']} s after the cut, "
            f"one holder {p['one_holder_after_heal_s']} s after the heal, the client answered by it "
            f"{p['client_reaches_holder_after_s']} s later; answers during the cut {p['answers_during']}. "
            f"Agent-only kill: second holder after {a['second_holder_after_s']} s; "
            f"answers while the daemon was dead {a['answers_during']}.")


def targets_met(results: dict) -> dict[str, bool]:
    ok = {k: r for k, r in results.items() if "error" not in r}
    out = {}
    p99 = {k: r["kill"]["outage"]["p99"] for k, r in ok.items() if r.get("kill")}
    for vigil in ("vigil-fencing", "vigil-fencing-etcd-apart"):
        if p99.get(vigil) is not None and p99.get("keepalived-0.1") is not None:
            out[f"{ok[vigil]['name']}: p99 < keepalived p99 at advert_int 0.1"] = \
                p99[vigil] < p99["keepalived-0.1"]
    for vigil in ("vigil-fencing-fast", "vigil-fencing-fast-etcd-apart"):  # issue 26 #2
        if p99.get(vigil) is not None:
            out[f"{ok[vigil]['name']}: p99 <= 250 ms"] = p99[vigil] <= 250
            if p99.get("keepalived-0.1") is not None:
                out[f"{ok[vigil]['name']}: p99 at least 30 % below keepalived's at advert_int 0.1"] = \
                    p99[vigil] <= 0.7 * p99["keepalived-0.1"]
    for key in (k for k in ok if k.startswith("vigil")):
        out[f"zero dual holders for {ok[key]['name']} in every test (whole run)"] = \
            ok[key]["dual_total"]["dual"] == 0
    return out


# --- the two processes ------------------------------------------------------------------

def start_responders(net: NetTopology, workdir: Path) -> list:
    ps = [procs.spawn(procs.in_netns(net.ns(i), [sys.executable, str(ROOT / "bench" / "vip_probe.py"),
                                                  "serve", name(i)]), workdir / f"responder-n{i}.log")
          for i in range(1, NODES + 1)]

    def listening(i: int) -> bool:
        import socket
        try:
            socket.create_connection((net.host(i), PORT), 0.2).close()
            return True
        except OSError:
            return False

    for i in range(1, NODES + 1):
        procs.wait_for(lambda: listening(i), 15, f"the responder on {name(i)}")
    return ps


def inner(args: argparse.Namespace) -> int:
    """In the client namespace: responders, probe and watch, then each system in turn."""
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: killed daemons' orphans are ours to reap
    net = NetTopology(TOPOLOGY, tag=args.tag)  # made by the outer process; this one deletes nothing
    workdir = Path(args.dir)
    responders = start_responders(net, workdir)
    watch, probe = HolderWatch(net).start(), Probe().start()
    results: dict = {}
    try:
        for key, system in make_systems(net, args).items():
            results[key] = run_system(key, system, net, watch, probe, args)
    finally:
        probe.stop()
        watch.stop()
        for p in responders:
            procs.stop(p.pid, "vip_probe.py")
            p.wait(10)
    return 0 if report(args, results) else 1


def sweep(net: NetTopology) -> None:
    """SIGKILL anything still running in our namespaces (only what this bench started can be there)."""
    for ns in net.made:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20)
        for pid in map(int, r.stdout.split()):
            log(f"left over in {ns}: {pid} {procs.cmdline(pid)[:80]}; SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("bench/vip.py: run as root (network namespaces)")
    if any(k.startswith("keepalived") for k in args.systems) and not shutil.which("keepalived"):
        raise SystemExit("bench/vip.py: keepalived is not installed: apt-get install -y keepalived")
    if any(k.startswith("vigil") for k in args.systems):
        load_vigil()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="vigil-vip-"))
    net = NetTopology(TOPOLOGY).create()
    child, rc = None, 1
    log(f"topology {net.tag}, work directory {workdir}")
    try:
        child = subprocess.Popen(["ip", "netns", "exec", net.client, sys.executable, str(Path(__file__).resolve()),
                                  "--inner", "--tag", net.tag, "--dir", str(workdir), "--kills", str(args.kills),
                                  "--systems", ",".join(args.systems), "--out", args.out,
                                  "--partition-s", str(args.partition_s), "--agent-hold-s", str(args.agent_hold_s),
                                  "--seed", str(args.seed)],
                                 cwd=ROOT)
        rc = child.wait()
    finally:
        if child is not None and child.poll() is None:
            child.terminate()  # the inner run stops its systems on SIGTERM
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        sweep(net)
        net.destroy()
    if rc == 0 and not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return rc


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    args = parse()
    sys.exit(inner(args) if args.inner else outer(args))


if __name__ == "__main__":
    main()
