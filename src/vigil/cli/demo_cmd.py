"""`vigil demo`: the one-command demonstration (see vigil.lab.demo)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="a 3-node cluster under load through four faults, with a report")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--out", default=".", help="where demo-report.json and demo-timeline.png go")
    p.add_argument("--secure", action="store_true",
                   help="etcd with TLS, client certificates, users and roles (as `lab up --secure`)")
    p.set_defaults(func=demo)


def demo(args) -> int:
    from vigil.lab.demo import run_demo

    return run_demo(Path(args.out), args.json, secure=args.secure)
