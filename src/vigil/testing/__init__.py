"""Fakes and the simulation kit, shipped as product code (as trio ships its
MockClock): FakeClock; MemoryStore and MemoryNetwork, which pass the same
conformance suites as real etcd and the real heartbeat transport; SimLoop
(asyncio on a FakeClock's time); SimCluster, real agents on all of them under
seeded faults; wait_until. Imported lazily: `import vigil.testing` costs the
product nothing."""

from __future__ import annotations

from typing import Any

__all__ = ["FakeClock", "MemoryNetwork", "MemoryStore", "SimCluster", "SimLoop", "wait_until"]
_WHERE = {"FakeClock": "clock", "MemoryNetwork": "memory_network", "MemoryStore": "memory_store",
          "SimCluster": "sim_cluster", "SimLoop": "sim_loop", "wait_until": "wait"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vigil.testing' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"vigil.testing.{_WHERE[name]}"), name)
