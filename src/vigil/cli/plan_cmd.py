"""`vigil plan`: how many etcd voters, who observes whom and what the
heartbeats cost per node, for N nodes in D failure domains; `--check`
compares a live cluster with its configuration (vigil.core.plan)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vigil.cli.target import add_target_args, resolve
from vigil.core.plan import Costs, check, layout, plan
from vigil.core.topology import TopologySettings
from vigil.errors import ConfigError, VigilError


def register(sub) -> None:
    p = sub.add_parser("plan", help="etcd voters, detection topology and heartbeat load for N nodes",
                       description="Plan a cluster of --nodes N in --domains D failure domains (racks), "
                                   "or --check a running one against its configuration.")
    p.add_argument("--nodes", type=int, help="nodes in the cluster (1..10000)")
    p.add_argument("--domains", type=int, default=1, help="failure domains (racks, power feeds; default 1)")
    p.add_argument("--observers", type=int, default=TopologySettings.observers, help="K (default 8)")
    p.add_argument("--agreement", type=int, default=TopologySettings.agreement, help="H of K (default 6)")
    p.add_argument("--show-observers", action="store_true", help="list every node's observers")
    p.add_argument("--check", action="store_true",
                   help="check the cluster named by --config/--lab against its configuration instead")
    p.add_argument("--json", action="store_true")
    add_target_args(p)
    p.set_defaults(func=plan_cmd)


def plan_cmd(args) -> int:
    if args.check:
        return _check(args)
    if args.nodes is None or not 1 <= args.nodes <= 10000:
        raise ConfigError("--nodes", args.nodes, "give the number of nodes, 1..10000")
    if not 1 <= args.domains <= args.nodes:
        raise ConfigError("--domains", args.domains, f"must be 1..--nodes ({args.nodes})")
    settings = TopologySettings(observers=args.observers, agreement=args.agreement)
    for name, value, fix in settings.problems():
        raise ConfigError(f"--{name}", value, fix)
    doc = plan(layout(args.nodes, args.domains), settings, measured_costs())
    if not args.show_observers:
        doc.pop("observers")
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


def measured_costs() -> Costs:
    """µs per heartbeat verified and signed on this machine (200 of each)."""
    from vigil.identity import generate

    key = generate()
    pub, data = key.public_key(), b"x" * 80
    sig = key.sign(data)
    t0 = time.perf_counter()
    for _ in range(200):
        key.sign(data)
    t1 = time.perf_counter()
    for _ in range(200):
        pub.verify(sig, data)
    t2 = time.perf_counter()
    return Costs(send_us=(t1 - t0) / 200 * 1e6, verify_us=(t2 - t1) / 200 * 1e6)


def render(doc: dict) -> str:
    t, per = doc["topology"], doc["per_node"]
    lines = [f"{doc['nodes']} nodes in {doc['domains']} failure domain(s)",
             f"etcd voters: {len(doc['etcd_voters'])} ({', '.join(doc['etcd_voters'])}); the other nodes "
             "are clients, not voters",
             "detection: " + ("full mesh (every node hears every other)" if t["full_mesh"] else
                              f"domain meshes ({len(t['meshed_domains'])} of {doc['domains']} domains) + "
                              f"{t['observers']} observers per node (every {t['observer_every']}th "
                              f"heartbeat), {t['agreement']} of them convict; everyone hears the leader"),
             f"per node: hears {per['peers_heard_mean']} peers (max {per['peers_heard_max']}), "
             f"{per['rx_packets_s_mean']} heartbeat packets/s received (max {per['rx_packets_s_max']}), "
             f"≈{per['cpu_pct_mean']} % of a core (max {per['cpu_pct_max']} %)",
             f"the leader sends {doc['leader']['tx_packets_s']} packets/s",
             f"(measured here: verify {doc['costs']['verify_us']} µs, sign {doc['costs']['send_us']} µs)"]
    for node, obs in (doc.get("observers") or {}).items():
        lines.append(f"  {node}: observed by {', '.join(obs) or '(its mesh only)'}")
    return "\n".join(lines)


def _check(args) -> int:
    from vigil.config import load_config
    from vigil.store.registry import Registry

    path = args.config or (str(Path(args.lab) / "nodes" / "n1" / "config.yaml") if args.lab else None)
    if path is None:
        raise ConfigError("--config", None, "--check needs a node's configuration (--config FILE or --lab DIR)")
    cfg = load_config(path)
    target = resolve(args)

    async def read(store):
        snap = await Registry(store, target.keys).snapshot()
        _, urls, _ = await store.raft_status()
        return set(snap.members), len(urls) or None

    try:
        registered, voters = target.run(read)
    except VigilError as e:
        raise VigilError(f"plan --check: cannot read the cluster from etcd: {e}") from None
    findings = check(cfg.domains(), registered, voters, cfg.topology)
    if args.json:
        print(json.dumps({"findings": [{"level": lv, "problem": p, "fix": f} for lv, p, f in findings],
                          "registered": sorted(registered), "etcd_voters": voters}, indent=2))
    else:
        for level, problem, fix in findings:
            print(f"[{level}] {problem}\n        fix: {fix}")
        print(f"{len(registered)} registered, {len(cfg.domains())} configured, {voters} etcd voters: "
              + ("errors found" if any(lv == "ERROR" for lv, _, _ in findings) else "ok"))
    return 1 if any(lv == "ERROR" for lv, _, _ in findings) else 0
