"""A few real agents in one process, on free loopback ports, each a heartbeat
peer of the others: for tests that need agents deciding against one etcd."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports


@contextlib.asynccontextmanager
async def agents_running(tmp_path: Path, cluster: str, nodes: tuple[str, ...], keys: dict[str, Any],
                         etcd_of: Callable[[str], dict[str, Any]]) -> AsyncIterator[list[Agent]]:
    """One running Agent per node of `nodes`, with its heartbeat keys from `keys`
    (vigil.testing.keys.shared_keys) and `etcd_of(node)` as its etcd block; all
    are stopped when the block ends."""
    ports = {node: free_ports(2) for node in nodes}
    agents = []
    for node in nodes:
        peers = [{"name": p, "addresses": ["127.0.0.1"], "port": ports[p][1]} for p in nodes if p != node]
        agents.append(Agent(parse_config({
            "cluster": cluster, "node": node, "data_dir": str(tmp_path / node), "etcd": etcd_of(node),
            "api": {"port": ports[node][0]},
            "heartbeat": {**keys[node], "port": ports[node][1], "peers": peers}})))
    stop = asyncio.Event()
    tasks = [asyncio.get_running_loop().create_task(a.run(stop)) for a in agents]
    try:
        yield agents
    finally:
        stop.set()
        await asyncio.gather(*tasks)
