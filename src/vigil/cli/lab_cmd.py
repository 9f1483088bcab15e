"""`vigil lab up` / `vigil lab kill` / `vigil lab down`.

`lab up --netns` (root) creates the namespaces in this process, then runs the
lab's harness inside the client namespace (`ip netns exec CLIENT vigil lab up
... --in-netns TAG`), where the BMCs and the actuator live and whence every
node's address is reachable; the namespaces are deleted again if that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from vigil.errors import ConfigError

BIG_LAB = 30  # nodes: above this, `--timing auto` gives the agents the product's etcd session timers
# Racks of 10 up to BIG_LAB nodes, of 5 above: GPU servers fill a rack's power at 4-8, and
# each agent hears its whole rack every 100 ms. 60 agents in racks of 10 need ~2.7 % of a
# core each and saturate this lab's 2 cores (measured: 50 ran at 134 %, the 6th wave of 10
# could not open etcd sessions); in racks of 5 they ran at 2.2 % each, 132 % for all 60.
RACK_SIZE, BIG_LAB_RACK_SIZE = 10, 5


def lab_rack_size(choice: int | None, nodes: int) -> int:
    """--rack-size as the lab takes it: the number given, else by the lab's size."""
    if choice is not None:
        return choice
    return RACK_SIZE if nodes <= BIG_LAB else BIG_LAB_RACK_SIZE


def lab_timing(choice: str, nodes: int, detection: str = "standard") -> dict | None:
    """--timing and --detection as Lab.up takes them: None for the lab's timers, else
    the product's defaults (vigil.core.timing.Timing) with the lab's 100 ms
    heartbeats; either with vigil.core.timing.FAST_DETECTION for `fast`."""
    from vigil.core.timing import FAST_DETECTION
    from vigil.lab.cluster import LAB_TIMING

    fast = FAST_DETECTION if detection == "fast" else {}
    if choice == "lab" or (choice == "auto" and nodes <= BIG_LAB):
        return LAB_TIMING | fast if fast else None
    # Above BIG_LAB agents the 2 cores etcd shares with them answer within 2 s, not always 1:
    # a machine of a real cluster does not host 60 agents and 3 etcd members.
    return {"heartbeat_interval": 0.1, **({"etcd_timeout": 2.0} if nodes > BIG_LAB else {}), **fast}


def register(sub) -> None:
    p = sub.add_parser("lab", help="a local cluster on loopback for demos, tests and benchmarks")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="up|kill|sensor|down", parser_class=type(p))
    lab_sub.required = True
    up = lab_sub.add_parser("up", help="start 3 etcd members and N agents in the background")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--dir", required=True, help="where configs, logs and lab.json go")
    up.add_argument("--cluster", default="lab")
    up.add_argument("--no-model", action="store_true",
                    help="no model servers and no router: agents and etcd only (starts in seconds)")
    up.add_argument("--generate", default="auto", metavar="MODEL",
                    help="the generative model beside the embedding one: auto (default: "
                         "smollm2-135m-instruct where scripts/install.sh --generative installed it, else "
                         "reference, a deterministic toy model at 50 tokens/s), smollm2-135m-instruct, "
                         "reference or none")
    up.add_argument("--no-generate", action="store_const", const="none", dest="generate",
                    help="serve embeddings only (same as --generate none)")
    up.add_argument("--secure", action="store_true",
                    help="etcd with TLS for clients and peers, client certificates, and a user and role "
                         "per agent, router, gateway and operator (files in DIR/tls)")
    up.add_argument("--netns", action="store_true",
                    help="root: every node (agent, its router, its model server, its etcd member) in its "
                         "own network namespace on a bridge (10.231.0.0/24), a client namespace, and a "
                         "VIP held by the leader in front of a router on every node")
    up.add_argument("--fencing", action="store_true",
                    help="a BMC (ipmi_sim) per node whose power off kills the node, a Modbus PLC and the "
                         "token-guarded actuator the leader writes through")
    up.add_argument("--require", action="append", default=[], metavar="KEY=COND",
                    help="the workload's requirement on every node, e.g. cuda_driver=>=12.1 (repeatable)")
    up.add_argument("--declare", action="append", default=[], metavar="NODE:KEY=VALUE",
                    help="a fingerprint value a node declares, e.g. n2:cuda_driver=12.2 (repeatable): "
                         "exercises the compatibility gate without GPUs")
    up.add_argument("--flap-threshold", type=int, default=0, metavar="N",
                    help="hold a node out after N failures in 600 s (flap damping; default 0: off, "
                         "since a lab is killed on purpose)")
    up.add_argument("--rack-size", type=int, metavar="N",
                    help="nodes per failure domain (rack-1, rack-2, ... in name order; default 10, "
                         f"or 5 above {BIG_LAB} nodes, where racks of 10 saturate 2 cores)")
    up.add_argument("--full-mesh", action="store_true",
                    help="every agent hears every other at any size (the detection topology before "
                         "observers; for comparisons): heartbeat.topology.full_mesh_up_to 1000")
    up.add_argument("--realtime", type=int, metavar="PRIORITY",
                    help="heartbeats on a thread of their own at SCHED_FIFO PRIORITY (1..98; 0: that "
                         "thread at normal priority), memory locked: heartbeat.realtime")
    up.add_argument("--timing", choices=("auto", "lab", "product"), default="auto",
                    help="the agents' etcd session timers: lab (lease 2 s, keep-alive and decision cycle "
                         "every 0.5 s, for fault tests) or product (the defaults of an installed node: "
                         "lease 10 s, keep-alive 2.5 s, cycle 1 s); heartbeats and detection are 100 ms in "
                         f"both. auto: lab up to {BIG_LAB} nodes, product above (60 agents with lab timers "
                         "keep 2 cores too busy for etcd to answer in 0.5 s; above it agents wait 2 s for "
                         "etcd's answers, not 1)")
    up.add_argument("--detection", choices=("standard", "fast"), default="standard",
                    help="the heartbeat detector: standard (100 ms heartbeats in 2 copies, a crash "
                         "suspected ~245 ms after the last) or fast (50 ms in 3 copies, ~122 ms; 3 x the "
                         "heartbeat packets): vigil.core.timing.FAST_DETECTION")
    up.add_argument("--in-netns", default="", help=argparse.SUPPRESS)
    up.set_defaults(func=lab_up)
    kill = lab_sub.add_parser("kill", help="SIGKILL every process of one node (agent, router, model "
                                           "server; not its etcd member)")
    kill.add_argument("--dir", required=True)
    kill.add_argument("--node", required=True)
    kill.set_defaults(func=lab_kill)
    sensor = lab_sub.add_parser("sensor", help="drive a node's facility sensors on the lab's PLC")
    sensor.add_argument("--dir", required=True)
    sensor.add_argument("--node", required=True)
    what = sensor.add_mutually_exclusive_group(required=True)
    what.add_argument("--inlet-temp", type=float, metavar="C", help="the rack inlet temperature, °C")
    what.add_argument("--current-ma", type=float, metavar="MA",
                      help="the raw loop current (NE 43: <= 3.6 or >= 21 mA is a sensor fault)")
    what.add_argument("--fault-code", type=lambda v: int(v, 0), metavar="CODE",
                      help="a PLC fault code (0x88: power imbalance; 0: none)")
    sensor.add_argument("--ramp", type=float, default=0.0, metavar="C_PER_S",
                        help="with --inlet-temp: keep moving it by this much per second")
    sensor.set_defaults(func=lab_sensor)
    sim = sub.add_parser("sensor-sim")  # the lab's own: no `help`, so `vigil --help` does not list it
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--nodes", type=int, required=True)
    sim.set_defaults(func=sensor_sim)
    down = lab_sub.add_parser("down", help="stop everything `lab up` started in DIR")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=lab_down)


def lab_up(args) -> int:
    from vigil.lab import Lab
    from vigil.lab.netns import VIP, NetTopology

    if args.netns and not args.in_netns:
        return _up_in_namespaces(args)
    # A `lab up` stopped half way (SIGTERM) takes down what it started, as a failed one does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    net = NetTopology(args.nodes, tag=args.in_netns) if args.in_netns else None
    lab = Lab.up(Path(args.dir), args.nodes, cluster=args.cluster, model=not args.no_model,
                 router=not args.no_model, secure=args.secure, fencing=args.fencing, net=net,
                 vip=VIP if net else None, own_net=bool(net), workload=_workload(args),
                 timing=lab_timing(args.timing, args.nodes, args.detection))
    leader = lab.leader()
    print(f"lab up in {lab.root}: etcd {', '.join(lab.etcd.endpoints)}; "
          f"{len(lab.nodes)} agents; leader {leader[0]} (token {leader[1]})" if leader else "no leader")
    if lab.router:
        print(f"  router: {lab.router.url} (e.g. POST {lab.router.url}/v1/embeddings)")
    if lab.netns:
        url = lab.front.url(lab.vip.split("/")[0]) if lab.front else lab.vip
        print(f"  VIP {lab.vip} in front of a router on every node: {url} from the client namespace "
              f"(ip netns exec {lab.netns['client']} curl {url}/v1/models)")
    if args.secure:
        print(f"  etcd: TLS and auth; the operator's certificate, key and password are in {lab.root / 'tls'}")
    print(f"  vigil status --lab {lab.root}")
    print(f"  vigil lab down --dir {lab.root}")
    return 0


def _workload(args) -> dict:
    """--require KEY=COND and --declare NODE:KEY=VALUE, checked as the agent will check them."""
    from vigil.lab.generative import lab_generator
    from vigil.probes.config import parse_health
    from vigil.realtime import problems as realtime_problems

    requires: dict[str, str] = {}
    declare: dict[str, dict[str, str]] = {}
    for item in args.require:
        key, sep, cond = item.partition("=")
        if not sep or not key:
            raise ConfigError("--require", item, "write KEY=COND, e.g. cuda_driver=>=12.1")
        requires[key] = cond
    for item in args.declare:
        node, sep, rest = item.partition(":")
        key, sep2, value = rest.partition("=")
        if not (sep and sep2 and node and key):
            raise ConfigError("--declare", item, "write NODE:KEY=VALUE, e.g. n2:cuda_driver=12.2")
        declare.setdefault(node, {})[key] = value
    unknown = sorted(set(declare) - {f"n{i + 1}" for i in range(args.nodes)})
    if unknown:
        raise ConfigError("--declare", ", ".join(unknown), f"nodes are n1..n{args.nodes}")
    parse_health({"requires": requires, "flap_threshold": args.flap_threshold})  # fails here, not in agents
    realtime = None if args.realtime is None else {"priority": args.realtime, "lock_memory": True}
    for field, value, fix in realtime_problems(args.realtime or 0, True):
        raise ConfigError("--realtime", value, fix)
    rack_size = lab_rack_size(args.rack_size, args.nodes)
    if not 1 <= rack_size <= 1000:
        raise ConfigError("--rack-size", rack_size, "must be 1..1000 nodes per failure domain")
    return {"requires": requires, "declare": declare, "flap_threshold": args.flap_threshold,
            "generate": lab_generator(args.generate), "rack_size": rack_size,
            "topology": {"full_mesh_up_to": 1000} if args.full_mesh else {}, "realtime": realtime}


def _up_in_namespaces(args) -> int:
    from vigil.errors import VigilError
    from vigil.lab.netns import NetTopology

    if os.geteuid() != 0:
        raise VigilError("--netns needs root (it creates network namespaces): run it as root, "
                         "or leave --netns out for a lab on loopback")
    if not 3 <= args.nodes <= 32:
        raise ConfigError("--nodes", args.nodes, "a lab in namespaces has 3 to 32 nodes")
    net = NetTopology(args.nodes).create()
    inner = ["lab", "up", "--nodes", str(args.nodes), "--dir", str(Path(args.dir).resolve()),
             "--cluster", args.cluster, "--in-netns", net.tag,
             *[f"--{f.replace('_', '-')}" for f in ("no_model", "secure", "fencing", "full_mesh") if getattr(args, f)],
             "--rack-size", str(lab_rack_size(args.rack_size, args.nodes)), "--timing", args.timing,
             "--detection", args.detection, *[x for r in args.require for x in ("--require", r)],
             *[x for d in args.declare for x in ("--declare", d)], "--flap-threshold", str(args.flap_threshold),
             "--generate", args.generate]
    try:
        code = subprocess.run(["ip", "netns", "exec", net.client, sys.executable, "-m", "vigil", *inner]).returncode
    except BaseException:
        net.destroy()
        raise
    if code != 0:
        net.destroy()
    return code


def lab_kill(args) -> int:
    lab = _load(Path(args.dir))
    pids = lab.kill_node(args.node)
    lab.save()
    print(json.dumps({"node": args.node, "killed": pids}))
    return 0


def _load(path: Path):
    from vigil.lab import Lab

    if not (path / "lab.json").exists():
        raise ConfigError("--dir", str(path), "no lab.json there: nothing to stop or kill (was `vigil lab up --dir "
                          f"{path}` run?)")
    return Lab.load(path)


def lab_down(args) -> int:
    lab = _load(Path(args.dir))
    lab.down()
    print(json.dumps({"stopped": [n.name for n in lab.nodes] + [m.name for m in lab.etcd.members]}))
    return 0


def lab_sensor(args) -> int:
    lab = _load(Path(args.dir))
    if not lab.sensors:
        raise ConfigError("--dir", args.dir, "this lab has no sensor PLC (labs in namespaces have none)")
    names = [n.name for n in lab.nodes]
    if args.node not in names:
        raise ConfigError("--node", args.node, f"must be one of {', '.join(names)}")
    if args.ramp and args.inlet_temp is None:
        raise ConfigError("--ramp", args.ramp, "goes with --inlet-temp (the temperature it starts from)")
    if args.inlet_temp is not None and not -40 <= args.inlet_temp <= 90:
        raise ConfigError("--inlet-temp", args.inlet_temp, "must be -40..90 °C")
    if args.current_ma is not None and not 0 <= args.current_ma <= 25:
        raise ConfigError("--current-ma", args.current_ma, "must be 0..25 mA")
    if args.fault_code is not None and not 0 <= args.fault_code <= 65535:
        raise ConfigError("--fault-code", args.fault_code, "must be 0..65535")
    lab.sensors.set(names.index(args.node), temp=args.inlet_temp,
                    ramp=args.ramp if args.inlet_temp is not None else None,
                    current_ma=args.current_ma, fault=args.fault_code)
    print(json.dumps({"node": args.node, "inlet_temp": args.inlet_temp, "ramp": args.ramp,
                      "current_ma": args.current_ma, "fault_code": args.fault_code}))
    return 0


def sensor_sim(args) -> int:
    from vigil.cli.runner import run, stop_on_signals
    from vigil.lab.sensors import serve

    async def main() -> None:
        await serve(args.port, args.nodes, stop_on_signals())

    run(main)
    return 0

