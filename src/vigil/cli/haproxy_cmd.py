"""`vigil haproxy config` and `vigil haproxy drive` (vigil.router.haproxy)."""

from __future__ import annotations

import logging
import sys

from vigil.cli.runner import run, stop_on_signals
from vigil.cli.target import add_target_args, resolve


def register(sub) -> None:
    p = sub.add_parser("haproxy", help="HAProxy as the data plane, driven by Vigil")
    s = p.add_subparsers(dest="haproxy_command", metavar="ACTION", required=True)
    c = s.add_parser("config", help="print a haproxy.cfg for the cluster's members (from etcd)")
    add_target_args(c)
    c.add_argument("--socket", default="/run/haproxy/vigil.sock", help="the runtime API socket")
    c.add_argument("--bind", default="0.0.0.0:8080", help="the frontend's address:port")
    c.set_defaults(func=config)
    d = s.add_parser("drive", help="set HAProxy's servers ready/drain/maint as Vigil sees the nodes",
                     description="Follows the cluster like a router: list --config's heartbeat "
                                 "address:port among every agent's heartbeat.observers.")
    d.add_argument("--config", required=True, help="a router-style YAML file (cluster, etcd, heartbeat)")
    d.add_argument("--socket", required=True, help="HAProxy's stats socket (level admin)")
    d.set_defaults(func=drive)


def config(args) -> int:
    from vigil.router.haproxy import render
    from vigil.store.registry import Registry

    target = resolve(args)

    async def go() -> str:
        store = target.store()
        try:
            snap = await Registry(store, target.keys).snapshot()
        finally:
            await store.close()
        return render(target.cluster, snap.members, args.socket, args.bind)
    import asyncio
    print(asyncio.run(go()), end="")
    return 0


def drive(args) -> int:
    from vigil.router.config import load_router_config
    from vigil.router.haproxy import HaproxyDriver

    cfg = load_router_config(args.config)
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format="%(asctime)s haproxy-driver %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = stop_on_signals()
        store = cfg.etcd.store(1.0)
        driver = HaproxyDriver(cfg, store, args.socket)
        await driver.start()
        try:
            await stop.wait()
        finally:
            await driver.stop()
            await store.close()
    run(main)
    return 0
