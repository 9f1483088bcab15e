"""Fakes shipped as product code: FakeClock and an in-memory store that
passes the same conformance suite as real etcd."""

from vigil.testing.clock import FakeClock
from vigil.testing.memory_store import MemoryStore

__all__ = ["FakeClock", "MemoryStore"]
