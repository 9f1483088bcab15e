"""Authentic heartbeats for tests: a node's signed heartbeats sent over real
UDP to an observer (a router), as its agent would send them, without the
rest of the agent. A router routes only to key-ring members it has heard
(vigil.router.membership), so a test's stand-in backend must heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from vigil.identity import SigningKeys, load_signing_keys
from vigil.net.wire import Heartbeat, encode

INTERVAL = 0.1  # s: the agents' default heartbeat interval (vigil.core.timing)


def member_record(url: str, ready: bool = True, source: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    """A member record as an agent writes it, minimally: its inference URL
    and readiness, and the address its heartbeats come from."""
    return {"heartbeat": {"addresses": [source], "port": 0},
            "inference": {"url": url, "ready": ready}, **extra}


class HeartbeatSender:
    """Sends each node's heartbeats every INTERVAL from 127.0.0.1 to `target`
    (host, port) until stopped; `stop_node(name)` silences one node (as a
    crash would), `start_node(name)` brings it back as a new incarnation."""

    def __init__(self, cluster: str, keys: dict[str, dict[str, Any]], nodes: list[str],
                 target: tuple[str, int], interval: float = INTERVAL):
        """`keys`: vigil.testing.keys.shared_keys output holding every node's key."""
        self.cluster, self.target, self.interval = cluster, target, interval
        self.signers: dict[str, SigningKeys] = {
            n: load_signing_keys(Path(keys[n]["signing_key_file"]), n) for n in nodes}
        self.live: dict[str, int] = {}  # node -> incarnation, while it sends
        self.seq = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._task: asyncio.Task | None = None
        for n in nodes:
            self.start_node(n)

    def start_node(self, name: str) -> None:
        self.live[name] = int(time.time() * 1e6)  # a start time in µs, as the agent's

    def stop_node(self, name: str) -> None:
        self.live.pop(name, None)

    def send_once(self) -> None:
        self.seq += 1
        now_us = int(time.time() * 1e6)
        for name, incarnation in list(self.live.items()):
            hb = Heartbeat(self.cluster, name, incarnation, self.seq, now_us, "healthy", "standby")
            with contextlib.suppress(OSError):
                self._sock.sendto(encode(hb, self.signers[name]), self.target)

    async def _run(self) -> None:
        while True:
            self.send_once()
            await asyncio.sleep(self.interval)

    def start(self) -> "HeartbeatSender":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close()
