"""Issue 23 #3: a node added to a running cluster reaches the running agents by
SIGHUP, without a restart or a role change (vigil.agent.reload). Real agents
in-process on a real etcd; the new node's heartbeats come over real UDP."""

from __future__ import annotations

import asyncio

import yaml

from tests.integration.agentharness import agents_running
from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.store.events import read_events
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

NODES = ("n1", "n2")
KEYS = shared_keys("n1", "n2", "n3")


def _file_of(agent: Agent, tmp_path, **changes) -> str:
    """A node file for `agent` as it runs, with `changes` to its heartbeat block or timing."""
    c, extra = agent.cfg, changes.pop("peers", [])
    doc = {"cluster": c.cluster, "node": c.node, "data_dir": c.data_dir,
           "etcd": {"endpoints": list(c.etcd.endpoints)}, "api": {"port": c.api_port},
           "heartbeat": {**KEYS[c.node], "port": c.heartbeat_port,
                         "peers": [{"name": p.name, "addresses": list(p.addresses), "port": p.port}
                                   for p in c.peers if p.name != "n3"] + extra},
           **changes}
    path = tmp_path / f"{c.node}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def test_a_new_peer_is_heard_after_a_reload_and_forgotten_after_the_next(tmp_path, etcd_cluster):
    eps = etcd_cluster.endpoints
    async with agents_running(tmp_path, "reload", NODES, KEYS, lambda n: {"endpoints": eps}) as agents:
        n1, n2 = agents
        leader = await wait_until(lambda: next((a for a in agents if a.is_leader()), None), 30, "a leader")
        token = leader.role.token
        api, hb = free_ports(2)
        n3 = Agent(parse_config({
            "cluster": "reload", "node": "n3", "data_dir": str(tmp_path / "n3"), "etcd": {"endpoints": eps},
            "api": {"port": api}, "heartbeat": {**KEYS["n3"], "port": hb, "peers": [
                {"name": a.cfg.node, "addresses": ["127.0.0.1"], "port": a.cfg.heartbeat_port}
                for a in agents]}}))
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(n3.run(stop))
        try:
            new_peer = {"name": "n3", "addresses": ["127.0.0.1"], "port": hb}
            assert n1.reload(_file_of(n1, tmp_path, peers=[new_peer]))
            await wait_until(lambda: "n3" in n1.heartbeats.peers.alive(), 15, "n1 to hear n3 after the reload")
            assert "n3" not in n2.heartbeats.peers.peers, "n2 was not reloaded: it still knows no n3"
            assert n1.reload(_file_of(n1, tmp_path, peers=[new_peer], priority=7))
            assert n1.cfg.priority != 7, "the priority is not taken live"
            assert n1.reload(_file_of(n1, tmp_path))  # n3 removed again
            assert "n3" not in n1.heartbeats.peers.peers
            (tmp_path / "bad.yaml").write_text("cluster: reload\nnode: n1\nheartbeat: [")
            assert not n1.reload(str(tmp_path / "bad.yaml"))
            assert [p.name for p in n1.cfg.peers] == ["n2"], "a file that does not load changes nothing"
            assert leader.is_leader() and leader.role.token == token, "no reload costs the role"
            await n1.events.flush()
            kinds = [e["kind"] for e in await read_events(n1.store, n1.keys) if e.get("node") == "n1"]
            assert kinds.count("config_reloaded") == 3
            assert "reload_needs_restart" in kinds and "config_reload_failed" in kinds
        finally:
            stop.set()
            await task
