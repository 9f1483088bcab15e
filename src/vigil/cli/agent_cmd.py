"""`vigil agent`, `vigil check-config`."""

from __future__ import annotations

import faulthandler
import os

from vigil import journal
from vigil.cli.runner import on_reload, run, stop_on_signals
from vigil.config import load_config


def register(sub) -> None:
    p = sub.add_parser("agent", help="run the node agent (foreground)")
    p.add_argument("--config", required=True, help="the node's YAML configuration file")
    p.set_defaults(func=run_agent)
    p = sub.add_parser("check-config", help="validate a node configuration file and exit")
    p.add_argument("config")
    p.set_defaults(func=check_config)


def load_node_config(path: str):
    """The node's configuration and, when it names one, its router's (checked now,
    so a bad router file stops the agent before anything starts). Raises ConfigError."""
    from vigil.errors import ConfigError
    from vigil.router.config import load_router_config

    cfg = load_config(path)
    if cfg.router_config:
        try:
            load_router_config(cfg.router_config)
        except ConfigError as e:
            raise ConfigError("router.config", cfg.router_config, f"does not load: {e}") from None
    return cfg


def check_config(args) -> int:
    cfg = load_node_config(args.config)
    t = cfg.timing
    print(f"{args.config}: OK (cluster {cfg.cluster}, node {cfg.node}, {len(cfg.peers)} peer(s), "
          f"suspicion after ~{t.suspicion_time * 1000:.0f} ms, lease TTL {t.lease_ttl} s, "
          f"self-demotion after {t.demote_after:g} s)")
    print(_etcd_check(cfg))
    inf = cfg.inference
    if inf and inf.command and inf.user is None and os.geteuid() == 0:
        print("WARNING: inference.command would run as root: set inference.user to an "
              "unprivileged user (the model server parses requests from the network)")
    return 0


def _etcd_check(cfg) -> str:
    """One line on the etcd this node would use: its version, and a loud
    warning for versions with the lease-revocation bug."""
    import asyncio

    from vigil.errors import StoreError
    from vigil.store.etcd_version import lease_revocation_bug

    async def ask() -> str:
        store = cfg.etcd.store(1.0)
        try:
            return await store.version()
        finally:
            await store.close()
    try:
        version = asyncio.run(ask())
    except StoreError as err:
        return f"etcd: not reachable now, version not checked ({err})"
    problem = lease_revocation_bug(version)
    return f"WARNING: {problem}" if problem else f"etcd: {version}"


def run_agent(args) -> int:
    cfg = load_node_config(args.config)  # ConfigError -> exit 2 before anything starts
    # systemd's watchdog sends SIGABRT to a hung agent: every thread's stack goes to the journal
    faulthandler.enable()
    journal.setup(cfg.log_level, "vigil-agent", cfg.node, cfg.cluster)
    from vigil.agent import Agent

    async def main() -> None:
        agent = Agent(cfg)
        on_reload(lambda: agent.reload(args.config))
        await agent.run(stop_on_signals())

    run(main)
    return 0
