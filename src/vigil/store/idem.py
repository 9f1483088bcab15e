"""Idempotency-Key markers in etcd: at most once across every router of a
cluster and across their restarts, for the idempotency window.

Layout: `/vigil-idem/<cluster>/<digest>` (Keys.idem_marker), one key per
Idempotency-Key scoped to its caller (vigil.router.idempotency.scope), beside
the cluster's prefix: every agent and router watches that one, and a marker
may carry a kept answer.

Contract:
- `claim(digest, marker)` creates the marker "in_flight" BEFORE the request
  is sent, guarded by etcd's `create_revision == 0`: a `Claim` when this
  caller now owns the key, else what was there (a `Marker`, or `BadMarker` for
  bytes no router wrote: the caller treats it as an unknown outcome, never as
  free). A claim that raised may have been applied, and a `free` that raised
  may not: the next claim of that key takes such a marker back (it is this
  instance's, `claimant`, and nothing ran under it) instead of calling it in
  flight.
- `settle(claim, marker)` replaces the caller's own marker with its outcome
  (only that incarnation: `create_revision` must still be the claim's);
  `free(claim)` deletes it, for a request that provably did not run.
- Lifetime: every marker is bound to a lease granted for `window + bucket`
  seconds and never renewed. The markers one router creates within one bucket
  (a tenth of the window) share that lease, so each lives at least `window`
  and at most `window + bucket` seconds, whether or not its router lives on,
  and a router holds at most 11 such leases (etcd may extend a lease across
  its own leader change: a marker may outlive that bound, never the window).
- Calls raise StoreError (StoreUnavailable when etcd did not answer); the
  router then refuses the keyed request (fail closed).
- `parse_marker` is total: any bytes give a Marker or a BadMarker, never an
  exception, with every size bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from vigil.clock import Clock
from vigil.core.records import BadRecord, Limits, decode_object
from vigil.errors import LeaseNotFound, StoreError
from vigil.store.base import Expect, Store
from vigil.store.keys import Keys

MAX_KEPT_BODY = 64 << 10  # a larger answer is kept as its digest only
MAX_VALUE = 4 * MAX_KEPT_BODY  # base64 of the body, headers and the rest
MARKER_LIMITS = Limits(MAX_VALUE, 8, MAX_VALUE)
MAX_HEADERS, MAX_HEADER = 64, 4096
STATES = ("in_flight", "done")
MAX_RECLAIMABLE = 10_000


@dataclass(frozen=True)
class Marker:
    """What etcd holds for one key: `in_flight` (claimed, outcome not recorded)
    or `done` with the outcome; `body` is None when it was too large to keep
    (`body_sha256` still names it)."""
    state: str
    fp: str  # the fingerprint the key was first used with
    router: str  # the router that claimed it
    claimant: str = ""  # which IdemMarkers instance (router process) claimed it
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    body_sha256: str = ""


@dataclass(frozen=True)
class BadMarker:
    reason: str


@dataclass(frozen=True)
class Claim:
    key: str
    revision: int  # the marker's create_revision: settle and free touch only it
    lease: int


def encode_marker(m: Marker) -> str:
    body = None if m.body is None or len(m.body) > MAX_KEPT_BODY else base64.b64encode(m.body).decode()
    digest = m.body_sha256 or (hashlib.sha256(m.body).hexdigest() if m.body is not None else "")
    headers = [[k[:MAX_HEADER], v[:MAX_HEADER]] for k, v in m.headers[:MAX_HEADERS]]
    return json.dumps({"v": 1, "state": m.state, "fp": m.fp, "router": m.router, "claimant": m.claimant,
                       "status": m.status,
                       "headers": headers, "body": body, "body_sha256": digest})


def parse_marker(value: str) -> Marker | BadMarker:
    """Bytes from etcd to a Marker, or a BadMarker naming what is wrong (decoded
    within bounds by vigil.core.records: a kept answer's base64 is one long string)."""
    d = decode_object("marker", value, MARKER_LIMITS)
    if isinstance(d, BadRecord):
        return BadMarker(d.problem)
    state, fp, router, claimant = d.get("state"), d.get("fp"), d.get("router", ""), d.get("claimant", "")
    if state not in STATES:
        return BadMarker(f"state is none of {', '.join(STATES)}")
    if not _text(fp, 2 * MAX_HEADER) or not _text(router, 256) or not _text(claimant, 64):
        return BadMarker("fp, router or claimant is not a short string")
    if state == "in_flight":
        return Marker(state, fp, router, claimant)
    status, headers = d.get("status"), _headers(d.get("headers"))
    if type(status) is not int or not 100 <= status <= 599:
        return BadMarker("status is not an HTTP status")
    if headers is None:
        return BadMarker(f"headers are not at most {MAX_HEADERS} [name, value] string pairs")
    digest = d.get("body_sha256", "")
    if not _text(digest, 64) or (digest and len(digest) != 64):
        return BadMarker("body_sha256 is not a SHA-256 in hex")
    body = _body(d.get("body"))
    if isinstance(body, BadMarker):
        return body
    return Marker(state, fp, router, claimant, status, headers, body, digest)


def _text(x: Any, most: int) -> bool:
    return isinstance(x, str) and len(x) <= most


def _headers(x: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(x, list) or len(x) > MAX_HEADERS:
        return None
    if not all(isinstance(p, list) and len(p) == 2 and _text(p[0], MAX_HEADER) and _text(p[1], MAX_HEADER)
               for p in x):
        return None
    return tuple((p[0], p[1]) for p in x)


def _body(x: Any) -> bytes | None | BadMarker:
    if x is None:
        return None
    if not _text(x, 4 * MAX_KEPT_BODY // 3 + 4):
        return BadMarker("body is not base64 of at most 64 KiB")
    try:
        return base64.b64decode(x, validate=True)
    except (binascii.Error, ValueError):
        return BadMarker("body is not base64")


class IdemMarkers:
    """One router's markers (see the module docstring)."""

    def __init__(self, store: Store, keys: Keys, window: float, clock: Clock):
        self.store, self.keys, self.clock = store, keys, clock
        self.window = window
        self.bucket = max(1.0, window / 10)
        self.claimant = secrets.token_hex(8)
        self._lease: tuple[int, float] | None = None  # id, and until when new markers may use it
        self._granting = asyncio.Lock()
        self._reclaimable: OrderedDict[str, float] = OrderedDict()  # digest -> when: see claim

    def __repr__(self) -> str:
        return (f"<IdemMarkers {self.keys.idempotency} window={self.window:g}s lease={self._lease} "
                f"reclaimable={len(self._reclaimable)}>")

    async def claim(self, digest: str, marker: Marker) -> Claim | Marker | BadMarker:
        key, marker = self.keys.idem_marker(digest), replace(marker, claimant=self.claimant)
        for _ in range(2):
            lease = await self._current_lease()
            try:
                created, kv = await self.store.create(key, encode_marker(marker), lease)
            except LeaseNotFound:  # gone before its time (etcd restored from a backup): a new one
                self._lease = None
                continue
            except StoreError:
                self._remember_reclaimable(digest)
                raise
            if created:
                self._reclaimable.pop(digest, None)
                return Claim(key, kv.create_revision, lease)
            found = parse_marker(kv.value)
            if (isinstance(found, Marker) and found.state == "in_flight" and found.claimant == self.claimant
                    and self._reclaimable.pop(digest, None) is not None):
                return Claim(key, kv.create_revision, kv.lease)  # ours, and nothing ran under it
            return found
        raise StoreError("etcd dropped two fresh leases for Idempotency-Key markers in a row")

    def _remember_reclaimable(self, digest: str) -> None:
        now = self.clock.now()
        self._reclaimable[digest] = now
        self._reclaimable.move_to_end(digest)
        while self._reclaimable and (len(self._reclaimable) > MAX_RECLAIMABLE or
                                    next(iter(self._reclaimable.values())) < now - self.window - self.bucket):
            self._reclaimable.popitem(last=False)  # forgetting one only turns its retry into a 409

    async def settle(self, claim: Claim, marker: Marker) -> bool:
        """Record the outcome; False when the marker is no longer the claim's (its
        lease ran out first: the window is over)."""
        try:
            applied, _ = await self.store.txn([Expect(claim.key, create_revision=claim.revision)],
                                              [(claim.key, encode_marker(marker), claim.lease)])
        except LeaseNotFound:
            return False
        return applied

    async def free(self, claim: Claim) -> bool:
        """Delete the marker of a request that did not run."""
        try:
            return await self.store.delete_if_created(claim.key, claim.revision)
        except StoreError:
            self._remember_reclaimable(claim.key.rsplit("/", 1)[-1])
            raise

    async def read(self, digest: str) -> Marker | BadMarker | None:
        kv = await self.store.get(self.keys.idem_marker(digest))
        return None if kv is None else parse_marker(kv.value)

    async def _current_lease(self) -> int:
        if self._lease and self.clock.now() < self._lease[1]:
            return self._lease[0]
        async with self._granting:
            if self._lease and self.clock.now() < self._lease[1]:
                return self._lease[0]
            asked = self.clock.now()  # before the grant: the lease starts no earlier in etcd
            lease = await self.store.grant(math.ceil(self.window + self.bucket))
            # A marker created by `asked + usable` lives until at least `asked + ttl`.
            usable = min(self.bucket, lease.ttl - self.window)
            if usable <= 0:
                raise StoreError(f"etcd granted a {lease.ttl} s lease for Idempotency-Key markers; "
                                 f"they need {math.ceil(self.window + self.bucket)} s")
            self._lease = (lease.id, asked + usable)
            return lease.id
