"""The store port: the few etcd primitives Vigil builds everything on.

Contract shared by `EtcdStore` and `MemoryStore` (tests/conformance runs the
same suite against both):

- Keys and values are str (UTF-8). Every write bumps the store revision by
  one; `create_revision` of a key is the revision of the write that created
  it and never changes while the key exists.
- `create` is atomic compare-and-create: it writes only when the key is
  absent and never overwrites (the election relies on it).
- `delete_if_created` deletes only the incarnation of the key that was
  created at `create_revision` (a resign never removes a successor's key).
- `txn(expect, puts, deletes)` is etcd's transaction: when every `Expect`
  holds, all its puts and deletes apply at one new revision, else none;
  it returns (applied, the store's revision).
- Leases: `grant(ttl)` returns a lease the store expires `ttl` seconds
  after the last successful `keepalive` (etcd may round the TTL up; the
  granted TTL is in the result). Expiry deletes every key bound to it.
  `keepalive` on an expired or revoked lease raises LeaseNotFound.
- `watch(prefix, start_revision)` yields every change under the prefix with
  revision >= start_revision, in revision order, exactly once, across
  reconnects. If start_revision was compacted it raises WatchCompacted; the
  caller re-reads and watches again from the new revision.
- Every call raises StoreUnavailable when no endpoint answered within the
  store's request timeout. A write that raised StoreUnavailable may or may
  not have been applied: re-read before assuming either.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import AsyncIterator, Sequence


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "put" | "delete"
    key: str
    value: str
    revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Expect:
    """A transaction's condition on one key: its create revision (0: absent)
    and/or its mod revision equal the given ones."""
    key: str
    create_revision: int | None = None
    mod_revision: int | None = None


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range_end)."""
    b = bytearray(prefix.encode())
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return "\0"
    b[-1] += 1
    return b.decode("utf-8", errors="surrogateescape")


class Store(abc.ABC):
    """etcd's v3 KV, lease and watch primitives; see the module docstring."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        """Every key in [prefix, end) (default: every key starting with `prefix`),
        sorted, and the revision read at."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """True when the key existed."""

    @abc.abstractmethod
    async def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, KeyValue]:
        """Atomically create `key` if absent. Returns (created, the key as it now is)."""

    @abc.abstractmethod
    async def delete_if_created(self, key: str, create_revision: int) -> bool:
        """Atomically delete `key` only if its create revision matches."""

    @abc.abstractmethod
    async def txn(self, expect: list[Expect], puts: list[tuple[str, str, int]],
                  deletes: Sequence[str] = ()) -> tuple[bool, int]:
        """If every `expect` holds, apply `puts` ((key, value, lease)) and `deletes`
        atomically at one revision. Returns (applied, revision)."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix` at one revision; returns how many."""

    @abc.abstractmethod
    async def grant(self, ttl: int) -> Lease: ...

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> int:
        """Renew; returns the TTL now granted. Raises LeaseNotFound once expired."""

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> bool:
        """Revoke now, deleting bound keys; False (no error) if it was already gone."""

    @abc.abstractmethod
    async def lease_left(self, lease_id: int) -> tuple[int, int]:
        """(seconds left, in whole seconds as etcd truncates them: 0 from a second
        before the expiry until etcd revokes it; -1 when the lease does not exist,
        the seconds granted (0 then))."""

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left (floored), or -1 when the lease does not exist."""
        return (await self.lease_left(lease_id))[0]

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int, resume: bool = True,
              range_end: str | None = None) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from `start_revision` on, in revision order,
        each once; with `range_end`, every change to a key in [prefix, range_end)
        instead (the store filters: a watcher of a few keys is not sent the
        rest). Raises WatchCompacted if that history is gone. `resume`: a
        stream that breaks (its member lost, or cut off from its raft leader) is
        picked up again from the next unseen revision without the caller knowing;
        False: it raises StoreUnavailable instead, for a caller that must know
        when it may have fallen behind (a mirror deciding on what it was told)."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history before `revision` (watches from before it fail)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
