"""Finding and claiming a free batch-job shard (vigil.agent.jobs): the oldest open
job's orphan first, else its first fresh shard (vigil.core.jobs.pick_shard), left
a while to another failure domain when this one is crowded (core.jobs.crowded).
A claim is the shard's owner record created under this node's lease; its create
revision is the shard's fencing token. Records that are not Vigil's are skipped
and said once, never trusted.

A shard whose owner the cluster has convicted (vigil.core.view.ClusterView.convicted:
I suspect it, a majority of its voters agree and, in a full mesh, more than half of
the whole cluster) is an orphan already: its owner
record is deleted (only that record: the create revision is checked) and the shard
claimed, without waiting for etcd to expire the owner's lease (TTL plus up to
half a second of etcd's lease scan). Safe whatever the owner does next: its next
commit checks its claim and fails, so a paused owner that runs again commits
nothing (`job_lost`), as after a lease expiry. No side of a split that is not a
majority of the cluster convicts anyone, so two sides never take a shard back and
forth. A shard whose owner this node only suspects (too few survivors to convict:
a lone one) is `lapsing`: the runner revokes the owner's lease the moment etcd
has expired it (vigil.agent.lease_expiry), not up to half a second later at
etcd's lease scan, and claims the shard on the record's deletion."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable

from vigil.clock import Clock
from vigil.core.jobs import (OPEN, JobRecordError, JobSpec, Progress, crowded, parse_progress, parse_spec,
                             payload_id, pick_shard, shard_of)
from vigil.core.payloads import Payload
from vigil.store import jobs
from vigil.store.base import Expect, KeyValue, Store
from vigil.store.keys import Keys

log = logging.getLogger(__name__)

POLL = 1.0  # s between a free node's looks for a shard while a job is open (vigil.agent.jobs)
SPREAD_WAIT = 2 * POLL  # s a node of a crowded domain leaves a fresh shard to other domains (core.jobs.crowded)


@dataclasses.dataclass
class Claim:
    spec: JobSpec
    shard: int
    revision: int  # the owner record's create revision
    lease: int
    progress: Progress
    progress_rev: int  # the progress record's mod revision, as last read or written
    owner_written: float = 0.0  # when the owner record's progress was last rewritten (monotonic)


class ShardClaimer:
    def __init__(self, store: Store, keys: Keys, node: str, clock: Clock, record: Callable[..., object],
                 domains: dict[str, str]):
        """`domains`: every configured member's failure domain (a job's shards spread over them)."""
        self.store, self.keys, self.node, self.clock, self.record = store, keys, node, clock, record
        self.domains = domains
        self._left: dict[tuple[str, int], float] = {}  # fresh shards left to other domains: since when
        self.avoid: dict[str, float] = {}  # job id -> until (monotonic): jobs this node could not serve
        self._warned: set[str] = set()
        self.convicted: Callable[[], frozenset[str]] = frozenset  # members the cluster convicted (the reconciler's)
        self.suspected: Callable[[], frozenset[str]] = frozenset  # members this node suspects (the reconciler's)
        self.lapsing: dict[int, tuple[str, str]] = {}  # as of the last look: lease -> (suspected owner, its shard)
        self.open = True  # the last look found an open job (or none was made yet)
        self.raced = False  # the last claim lost its shard to a quicker node

    def leave_to_others(self, picked: tuple[str, int], progress: dict[tuple[str, int], Progress],
                         owned: set[tuple[str, int]]) -> bool:
        """True while a crowded domain's node waits SPREAD_WAIT for another domain's to take it."""
        now = self.clock.now()
        self._left = {k: t for k, t in self._left.items() if now - t < 10 * SPREAD_WAIT}
        if not crowded(*picked, progress, owned, self.domains, self.node):
            return False
        return now - self._left.setdefault(picked, now) < SPREAD_WAIT

    async def _open_shards(self) -> tuple[dict[str, JobSpec], dict[tuple[str, int], tuple[Progress, int]],
                                          set[tuple[str, int]], dict[tuple[str, int], tuple[str, int]]]:
        """(open jobs' specs, their shards' progress and its mod revision, shards owned,
        shards whose owner is convicted: (owner, the owner record's create revision))."""
        specs, progress = {}, {}
        self.lapsing = {}
        for kv in (await self.store.range(self.keys.job_specs))[0]:
            try:
                spec = parse_spec(kv.value, kv.key)
                specs[spec.id] = spec
            except JobRecordError as e:
                self._skipped(kv.key, e)
        if not specs:
            return specs, {}, set(), {}
        for kv in (await self.store.range(self.keys.job_progresses()))[0]:
            job, _, shard = kv.key[len(self.keys.job_progresses()):].partition("/")
            n = shard_of(shard)  # "²".isdigit() holds, and int("²") raises
            if job in specs and n is not None:
                try:
                    progress[job, n] = (parse_progress(kv.value, kv.key, specs[job], n), kv.mod_revision)
                except JobRecordError as e:
                    self._skipped(kv.key, e)
        owned, forfeit = await self._owners()
        now = self.clock.now()
        self.avoid = {j: until for j, until in self.avoid.items() if until > now}
        owned |= {(j, s) for j, s in progress if j in self.avoid}
        return specs, progress, owned, {k: v for k, v in forfeit.items() if k not in owned}

    async def _owners(self) -> tuple[set[tuple[str, int]], dict[tuple[str, int], tuple[str, int]]]:
        """(shards owned, shards whose owner is convicted: (owner, the owner record's
        create revision)); `lapsing` gets the leases of owners this node only suspects."""
        prefix = self.keys.payload("job:")
        owned: set[tuple[str, int]] = set()
        forfeit: dict[tuple[str, int], tuple[str, int]] = {}
        convicted, suspected = self.convicted() - {self.node}, self.suspected() - {self.node}
        for kv in (await self.store.range(prefix))[0]:
            job, _, tail = kv.key[len(prefix):].rpartition(":")
            if (n := shard_of(tail)) is None:
                continue
            owner = jobs.owner_of(kv.value).get("node") if convicted or suspected else None
            if owner in convicted:
                forfeit[job, n] = (str(owner), kv.create_revision)
                continue
            owned.add((job, n))
            if owner in suspected and kv.lease:
                self.lapsing[kv.lease] = (str(owner), f"batch job {job} shard {n}")
        return owned, forfeit

    def lapsing_owner(self, owner: str) -> bool:
        """`owner` is suspected here, and not convicted (a conviction takes its shards at once)."""
        return owner in self.suspected() and owner not in self.convicted()

    def _skipped(self, key: str, e: JobRecordError) -> None:
        """A record that is not Vigil's: said once per key, never trusted."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning("batch job record skipped: %s", e)

    async def claim(self, lease: int) -> Claim | None:
        """Take the first open shard nobody owns of the oldest open job, or None."""
        specs, progress, owned, forfeit = await self._open_shards()
        open_now = {k: p for k, (p, _) in progress.items()}
        self.open = any(p.state in OPEN for p in open_now.values())
        picked = pick_shard(specs, open_now, owned)
        if picked is None or self.leave_to_others(picked, open_now, owned):
            return None
        job, shard = picked
        spec, (prog, rev) = specs[job], progress[picked]
        key = self.keys.payload(payload_id(job, shard))
        if picked in forfeit:  # its owner was convicted: its record goes now, not with its lease
            owner, created = forfeit[picked]
            if await self.store.delete_if_created(key, created):
                self.record("job_taken_over", f"batch job {job} shard {shard}: its owner {owner} is convicted "
                            "(suspected here and by a majority of the cluster); its claim is withdrawn "
                            "without waiting for its lease", job=job, shard=shard, owner=owner)
        ok, kv = await self.store.create(key, self.owner_record(spec, shard, prog.done), lease)
        if not ok and not self._mine(kv, lease):
            self.raced = True  # another node was quicker (every idle node woke on the same deletion)
            return None
        claimed = prog.claimed(self.node, self.clock.wall())
        ok, new_rev = await self.store.txn([Expect(key, create_revision=kv.create_revision),
                                            Expect(self.keys.job_progress(job, shard), mod_revision=rev)],
                                           [(self.keys.job_progress(job, shard), claimed.record(), 0)])
        if not ok:  # the shard changed meanwhile (cancelled, or finished): leave it
            await self.store.delete_if_created(key, kv.create_revision)
            return None
        c = Claim(spec, shard, kv.create_revision, lease, claimed, new_rev)
        start = spec.shard_range(shard)[0]
        self.record("job_claimed", f"batch job {job} shard {shard}: claimed (claim {c.revision}), "
                    f"{'resuming at' if prog.next > start else 'starting at'} chunk {prog.next} "
                    f"(chunks {start}..{prog.end - 1}; {prog.done} inputs of the shard done)", job=job, shard=shard,
                    claim=c.revision, chunk=prog.next, done=prog.done)
        return c

    def _mine(self, kv: KeyValue | None, lease: int) -> bool:
        """An owner record that names this node under its lease is this node's claim,
        even when the create said "already there": etcd's client retried a create
        whose first answer was lost (as Election.try_campaign reads it)."""
        return kv is not None and kv.lease == lease and jobs.owner_of(kv.value).get("node") == self.node

    def owner_record(self, spec: JobSpec, shard: int, done: int) -> str:
        p = Payload(payload_id(spec.id, shard), spec.model, "job", self.clock.wall(), done)
        lo, hi = spec.shard_range(shard)
        inputs = min(spec.total, hi * spec.chunk_size) - lo * spec.chunk_size
        return json.dumps({**p.record(self.node), "total": inputs})
