"""SIGHUP: what a running agent takes from its configuration file without a
restart, so a node added to or removed from the cluster (`vigil init
--add-node`/`--remove-node`) reaches the running members without a role
change.

Contract:
- Taken live: the heartbeat signing key and the key ring (the new ring
  verifies and the file's `send` key signs from the next packet on), the
  heartbeat peers (a new peer starts `unknown`, as at start; a removed one is
  forgotten) and the observers (the routers our heartbeats go to). The
  node's router is sent SIGHUP too: it reads the key ring again, which is
  what makes it learn or forget a member.
- Anything else that changed (etcd, API, timing, VIPs, inference, ...) is
  named in one `reload_needs_restart` event and left as it runs: a role is
  never dropped to apply a file.
- A file that does not load changes nothing: a `config_reload_failed` event
  says why, and the running configuration stays.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

from vigil.config import NodeConfig, load_config
from vigil.errors import ConfigError

LIVE = {"keys", "peers", "observers"}


def needs_restart(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The fields that differ and that a running agent does not take live."""
    return [f.name for f in dataclasses.fields(NodeConfig)
            if f.name not in LIVE and getattr(old, f.name) != getattr(new, f.name)]


def reload_config(agent: Any, path: str) -> bool:
    """Read `path` again and apply what can be applied live (see the module docstring)."""
    record = agent.events.record
    try:
        new = load_config(path)
        keys = new.keys.reload(new.node, [p.name for p in new.peers])
    except ConfigError as e:
        record("config_reload_failed", f"{path} not reloaded, the running configuration stays: {e}")
        return False
    if new.node != agent.cfg.node or new.cluster != agent.cfg.cluster:
        record("config_reload_failed", f"{path} names node {new.node} of cluster {new.cluster}; this agent is "
                                       f"{agent.cfg.node} of {agent.cfg.cluster}: not reloaded")
        return False
    stale = needs_restart(agent.cfg, new)
    added, removed = agent.heartbeats.use_peers(new.peers, new.observers, agent.cfg.topology)
    agent.heartbeats.use_keys(keys)
    # The reconciler reads the ring (who may lead and vote) and the peers from the same object.
    agent.cfg = agent.reconciler.cfg = dataclasses.replace(agent.cfg, keys=keys, peers=new.peers,
                                                           observers=new.observers)
    if agent.health.gate:
        agent.health.gate.domains = agent.cfg.domains()  # the drain budget counts the members
    agent.registration.request_publish()  # the key id we sign with is in our member record: peers' pair keys
    ring = {n: sorted(ids) for n, ids in keys.ring.members.items()}
    record("config_reloaded", f"configuration reloaded: signing with key {keys.signing.send}, ring {ring}"
                              + (f", peers added {added}" if added else "")
                              + (f", peers removed {removed}" if removed else ""),
           send=keys.signing.send, ring=ring, added=added, removed=removed)
    if stale:
        record("reload_needs_restart", f"{', '.join(stale)} changed in {path}: not applied until "
                                       f"`systemctl restart vigil-agent` (a role is never dropped to apply "
                                       "a file)", fields=stale)
    if agent.router and agent.router.pid:
        _hup(agent.router.pid)
    return True


def _hup(pid: int) -> None:
    import os

    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        pass  # it is restarting: it reads the ring when it starts
