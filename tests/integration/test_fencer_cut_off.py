"""A fencer cut off from etcd powers nothing off (found by the chaos run: an
isolated standby, counting a suspicion its stale view still held, powered a
healthy leader off while its fencing marker's write was still timing out).
The marker is written before any device acts, so no etcd, no power-off."""

from __future__ import annotations

import pytest

from vigil.agent.stonith import Fencer
from vigil.clock import SystemClock
from vigil.core.view import LeaderInfo
from vigil.errors import StoreError
from vigil.procs import free_ports
from vigil.stonith.devices import FenceDevice
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys
from vigil.store.registry import Registry


class Recording(FenceDevice):
    name = "recording switch"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def status(self) -> str:
        self.calls.append("status")
        return "on"

    async def power_off(self) -> None:
        self.calls.append("power_off")

    async def power_on(self) -> None:
        self.calls.append("power_on")


class Fenced:
    def fenced(self, node: str, token: int) -> None:
        self.last = (node, token)


async def test_a_fencer_that_cannot_reach_etcd_powers_nothing_off():
    (port,) = free_ports(1)  # nothing listens there: every etcd call is refused
    store = EtcdStore([f"http://127.0.0.1:{port}"], 0.5)
    events: list[str] = []
    device = Recording()
    try:
        fencer = Fencer("n2", {}, SystemClock(), lambda kind, cause, **_: events.append(kind),
                        Registry(store, Keys("cut")), store, Fenced())
        fencer.devices = {"n1": [device]}
        with pytest.raises(StoreError):
            await fencer.fence_leader(LeaderInfo("n1", 7, 99), "suspected", 42)
        assert "power_off" not in device.calls, "a fencer without etcd switched a leader off"
        assert "node_fenced" not in events
    finally:
        await store.close()
