"""`vigil lab up` / `vigil lab down`."""

from __future__ import annotations

import json
from pathlib import Path

from vigil.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("lab", help="a local cluster on loopback for demos, tests and benchmarks")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="up|down", parser_class=type(p))
    lab_sub.required = True
    up = lab_sub.add_parser("up", help="start 3 etcd members and N agents in the background")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--dir", required=True, help="where configs, logs and lab.json go")
    up.add_argument("--cluster", default="lab")
    up.add_argument("--no-model", action="store_true",
                    help="no model servers and no router: agents and etcd only (starts in seconds)")
    up.add_argument("--secure", action="store_true",
                    help="etcd with TLS for clients and peers, client certificates, and a user and role "
                         "per agent, router, gateway and operator (files in DIR/tls)")
    up.set_defaults(func=lab_up)
    down = lab_sub.add_parser("down", help="stop everything `lab up` started in DIR")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=lab_down)


def lab_up(args) -> int:
    from vigil.lab import Lab

    lab = Lab.up(Path(args.dir), args.nodes, args.cluster, model=not args.no_model,
                 router=not args.no_model, secure=args.secure)
    leader = lab.leader()
    print(f"lab up in {lab.root}: etcd {', '.join(lab.etcd.endpoints)}; "
          f"{len(lab.nodes)} agents; leader {leader[0]} (token {leader[1]})" if leader else "no leader")
    if lab.router:
        print(f"  router: {lab.router.url} (e.g. POST {lab.router.url}/v1/embeddings)")
    if args.secure:
        print(f"  etcd: TLS and auth; the operator's certificate, key and password are in {lab.root / 'tls'}")
    print(f"  vigil status --lab {lab.root}")
    print(f"  vigil lab down --dir {lab.root}")
    return 0


def lab_down(args) -> int:
    from vigil.lab import Lab

    path = Path(args.dir)
    if not (path / "lab.json").exists():
        raise ConfigError("--dir", str(path), "no lab.json there: nothing to stop (was "
                          f"`vigil lab up --dir {path}` run?)")
    lab = Lab.load(path)
    lab.down()
    print(json.dumps({"stopped": [n.name for n in lab.nodes] + [m.name for m in lab.etcd.members]}))
    return 0
