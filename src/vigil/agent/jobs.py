"""JobRunner: this node's share of the batch jobs (vigil.core.jobs).

While the node has a session and its model server is ready, every `POLL`
seconds, at once when a shard's owner record is deleted (`freed`: its
node's lease expired or it let the shard go) and when this node suspects or
the cluster convicts a member (`follow`: a convicted member's shards are
orphans already; a suspected one's lease is revoked at its expiry,
vigil.agent.job_claims),
the runner looks for an open shard of a job that nobody owns (an orphan
before a fresh one),
claims it (creates the shard's owner record under this node's lease: the
claim revision is the shard's fencing token), and embeds it chunk by chunk
through the node's own model server, committing each chunk's result with
the shard's checkpoint in one guarded transaction. One shard at a time per
node: the shards of a job spread over the nodes that take batch work.

- The node dies: once the cluster convicts it (or its lease expires and the
  shard's owner record goes with it) the next node free of a shard claims
  it and resumes at its checkpoint (at once if one is idle; else once one
  finishes its own shard: every live node keeps working meanwhile).
- The node is paused past its detection time (the cluster convicts it) or
  its lease, and runs again: its next commit fails the claim check; it
  stops (`job_lost`) and commits nothing.
- The model server is busy (429, 503): the chunk waits and is sent again;
  busy is not broken. It stops answering, the engine is judged not ready,
  or the node goes out of service (maintenance, drain, a verdict that takes
  it out of rotation): the claim is released at once for another node
  (`job_released`).
- The model server refuses an input (400): the job fails (`job_failed`),
  naming the chunk; the same input would fail on every node.
- etcd is away: nothing is committed; a commit whose outcome is unknown is
  re-read before anything else is done. An owner record that a retried
  create found "already there" under this node's name and lease is this
  node's claim.
- A chunk's result is larger than one etcd request may be: the job fails,
  naming the chunk and a --chunk that fits (it would fail on every node).
  A result is created once, never overwritten (the commit requires it absent).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import TYPE_CHECKING, Callable

import aiohttp

from vigil.agent.job_claims import POLL, Claim, ShardClaimer
from vigil.agent.lease_expiry import LeaseReaper
from vigil.clock import Clock, woken
from vigil.core.jobs import JobRecordError, JobSpec, Progress, parse_chunk, parse_progress, payload_id, sha256_of
from vigil.errors import StoreError, StoreUnavailable, VigilError
from vigil.store.base import Expect, Store
from vigil.store import jobs
from vigil.store.keys import Keys

if TYPE_CHECKING:
    from vigil.agent.reconciler import Reconciler

log = logging.getLogger(__name__)

POLL_IDLE = 5.0  # s between looks while no job is open: a new job starts within this
BUSY_BACKOFF = (0.2, 2.0)  # s: first and longest wait for a busy model server
CHUNK_TIMEOUT = 120.0  # s for one chunk's embeddings (a busy CPU server)
AVOID = 30.0  # s a job this node could not serve is left to others
OWNER_EVERY = 2.0  # s: the owner record's progress is rewritten at most this often (vigil.core.payloads)


class JobStop(VigilError):
    """This node stops working on the job. `state`: the job ends for every node
    (failed); `lost`: another node holds it now; `avoid`: leave it to others a while."""

    def __init__(self, why: str, state: str = "", lost: bool = False, avoid: bool = False):
        self.state, self.lost, self.avoid = state, lost, avoid
        super().__init__(why)


class JobRunner:
    def __init__(self, store: Store, keys: Keys, node: str, server_url: str, clock: Clock,
                 lease: Callable[[], int], ready: Callable[[], bool], record: Callable[..., object],
                 domains: dict[str, str] | None = None):
        """`lease()`: this node's session lease (0: none); `ready()`: the model server may take work;
        `domains`: every configured member's failure domain (a job's shards spread over them)."""
        self.store, self.keys, self.node, self.url, self.clock = store, keys, node, server_url, clock
        self.lease, self.ready, self.record = lease, ready, record
        self.claims = ShardClaimer(store, keys, node, clock, record, domains or {})
        self.current: Claim | None = None
        self._freed = asyncio.Event()  # a shard's owner record was deleted since the last look
        self._let_go_keys: collections.deque[str] = collections.deque(maxlen=16)  # deleted by us: no news
        self._http: aiohttp.ClientSession | None = None
        self.reaper = LeaseReaper(store, clock, record)

    async def run(self) -> None:
        """Claim and work, forever. etcd failing mid-job keeps the claim (it holds
        while the lease does): the work goes on from the checkpoint once etcd answers."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHUNK_TIMEOUT))
        try:
            finished = False
            while True:
                if not finished:  # a node that just finished a shard takes the next at once
                    await woken(self._freed, POLL if self.claims.open else POLL_IDLE)
                finished = False
                self._freed.clear()
                lease = self.lease()
                if not lease:  # no live session now: a claim holds while its lease does (etcd decides)
                    continue
                if self.current and self.current.lease != lease:
                    self.current = None  # the claim went with the lease
                if not (self.current or self.ready()):
                    continue
                try:
                    claim = self.current or await self.claim(lease)
                    if claim:
                        finished = await self.work(claim)
                    elif self.claims.raced:  # another node took that shard: another may be free now
                        finished, self.claims.raced = True, False
                except StoreError as e:
                    log.info("batch jobs: etcd failed (%s); the claim holds while the lease does", e)
                except VigilError as e:  # a record changed under us into one that is not Vigil's
                    log.warning("batch jobs: %s; letting the shard go", e)
                    await self._let_go()
        finally:
            await self.reaper.close()
            await self._http.close()

    def follow(self, reconciler: Reconciler) -> None:
        """Take shards as the agent's decision loop sees them freed: on an owner record's
        deletion (`freed`), on an owner's conviction (`ShardClaimer.convicted`) and, on a
        suspicion short of one, when the owner's lease expires (`ShardClaimer.lapsing`)."""
        reconciler.watch.on_payload_gone = self.freed
        self.claims.convicted = lambda: reconciler.convicted
        self.claims.suspected = lambda: reconciler.suspected
        reconciler.on_suspicion += [self._freed.set, self.reaper.suspected_anew]

    def freed(self, key: str) -> None:
        """A payload record was deleted (vigil.agent.registry_watch): a shard's owner
        record means its shard is free (its node's lease expired, or it let it go), and
        an idle runner looks now instead of at its next poll."""
        if key in self._let_go_keys:  # our own release: looking again at once would take it back
            self._let_go_keys.remove(key)
        elif key.startswith(self.keys.payload("job:")):
            self._freed.set()

    async def _let_go(self) -> None:
        c, self.current = self.current, None
        if c is not None:
            try:
                await self._delete_own(c)
            except StoreError:
                pass  # the lease takes it

    async def _delete_own(self, c: Claim) -> None:
        """Delete our owner record of `c` (StoreError: the lease takes it later)."""
        key = self.keys.payload(payload_id(c.spec.id, c.shard))
        self._let_go_keys.append(key)  # the oldest are forgotten: a delete the watch never showed
        await self.store.delete_if_created(key, c.revision)

    async def claim(self, lease: int) -> Claim | None:
        """Take a free shard under `lease` (ShardClaimer.claim), or None; with none
        free, revoke the leases of suspected owners at their expiry (`lapsing`)."""
        c = await self.claims.claim(lease)
        if c is None:
            for held, (owner, what) in self.claims.lapsing.items():
                self.reaper.reap(held, owner, what, lambda o=owner: self.claims.lapsing_owner(o))
        return c


    # -- working -------------------------------------------------------------------
    async def work(self, c: Claim) -> bool:
        """Embed and commit chunk after chunk until the shard is done (True) or this
        node stops on it (False); `current` is then None. StoreError leaves the claim
        current."""
        self.current = c
        try:
            while c.progress.state == "running":
                lease = self.lease()
                if lease == 0:  # no live session this moment: the claim holds while its lease does
                    await asyncio.sleep(POLL)
                    continue
                if not self.ready() or lease != c.lease:
                    raise JobStop("this node stopped taking work (engine not ready, health verdict, "
                                  "maintenance or drain)" if lease == c.lease else "this node's session ended")
                await self._chunk(c)
        except JobStop as e:
            self.current = None
            await self._stop(c, e)
            return False
        self.current = None
        job, shard = c.spec.id, c.shard
        try:
            view = await jobs.read_job(self.store, self.keys, job)
        except VigilError as e:  # deleted meanwhile, or not Vigil's any more
            log.warning("batch job %s shard %s done, but the job cannot be read: %s", job, shard, e)
            return True
        if view.state == "done":
            self.record("job_done", f"batch job {job}: all {c.spec.total} inputs embedded "
                        f"({sum(p.claims for p in view.shards)} claims over {c.spec.shards} shards)", job=job)
        else:
            self.record("job_shard_done", f"batch job {job} shard {shard}: done ({c.progress.done} inputs); "
                        f"job {view.done}/{c.spec.total}", job=job, shard=shard)
        return True

    async def _chunk(self, c: Claim) -> None:
        k, spec = c.progress.next, c.spec
        kv = await self.store.get(self.keys.job_input(spec.id, k))
        if kv is None:
            raise JobStop(f"input chunk {k} is missing from the store", "failed")
        try:
            inputs = parse_chunk(kv.value, kv.key, spec, k)
        except JobRecordError as e:
            raise JobStop(str(e), "failed") from None
        vectors = await self._embed(spec, inputs, k)
        result = {"chunk": k, "node": self.node, "claim": c.revision, "at": self.clock.wall(),
                  "inputs_sha256": sha256_of(inputs), "vectors": vectors}
        after = c.progress.committed(len(inputs), self.clock.wall())
        try:
            await self._commit(c, after, [(self.keys.job_result(spec.id, k), json.dumps(result), 0)])
        except StoreError as e:
            if not _too_large(e):
                raise
            # The same chunk would be refused on every node, after every retry: fail the job
            # (the earlier chunks stay committed) instead of embedding it again forever.
            size = len(json.dumps(result))
            raise JobStop(f"the result of chunk {k} ({len(inputs)} inputs, {size} bytes) is larger than one "
                          f"etcd request may be (etcd --max-request-bytes, 1.5 MiB by default): submit the "
                          f"job again with a smaller --chunk (at most {max(1, len(inputs) * 2**20 // size)} "
                          f"inputs for this model)", "failed") from None

    async def _commit(self, c: Claim, after: Progress, puts: list[tuple[str, str, int]]) -> None:
        """Write `puts` and move the checkpoint to `after`, only while this node holds
        the claim; a commit that did not land is tried again; JobStop once the claim is lost."""
        owner = self.keys.payload(payload_id(c.spec.id, c.shard))
        progress_key = self.keys.job_progress(c.spec.id, c.shard)
        puts = puts + [(progress_key, after.record(), 0)]
        deletes = [owner] if after.state != "running" else []
        now = self.clock.now()
        rewrite = not deletes and now - c.owner_written >= OWNER_EVERY  # the watchers' traffic is bounded
        if rewrite:
            puts.append((owner, self.claims.owner_record(c.spec, c.shard, after.done), c.lease))
        # A chunk's result is created, never overwritten: a second commit of one chunk cannot
        # land unseen (the claim and checkpoint checks already exclude it; this makes it visible).
        fresh = [Expect(key, create_revision=0) for key, _, _ in puts if key != owner and key != progress_key]
        while True:
            try:
                ok, rev = await self.store.txn([Expect(owner, create_revision=c.revision),
                                                Expect(progress_key, mod_revision=c.progress_rev), *fresh],
                                               puts, deletes)
            except StoreUnavailable:  # applied or not: read before anything else
                ok, rev = await self._landed(c, after)
            if ok:
                c.progress, c.progress_rev = after, rev
                c.owner_written = now if rewrite else c.owner_written
                return
            await self._refused(c, [e.key for e in fresh])

    async def _landed(self, c: Claim, after: Progress) -> tuple[bool, int]:
        """Whether a commit whose answer was lost was applied (re-read until etcd answers)."""
        while True:
            try:
                kv = await self.store.get(self.keys.job_progress(c.spec.id, c.shard))
                break
            except StoreUnavailable:
                await asyncio.sleep(0.5)
        if kv is None or kv.mod_revision == c.progress_rev:
            return False, 0
        seen = parse_progress(kv.value, kv.key, c.spec, c.shard)
        return (seen.next, seen.state, seen.node, seen.claims) == (after.next, after.state, self.node,
                                                                   after.claims), kv.mod_revision

    async def _refused(self, c: Claim, fresh: list[str]) -> None:
        """A commit did not apply: return to try it again, or JobStop saying why not."""
        owner = await self.store.get(self.keys.payload(payload_id(c.spec.id, c.shard)))
        if owner is None or owner.create_revision != c.revision:
            holder = jobs.owner_of(owner.value).get("node", "?") if owner else "nobody yet"
            raise JobStop(f"the claim was lost (this node's lease ended, or the cluster convicted it while "
                          f"it was silent; now held by {holder}); "
                          "nothing was committed after it", lost=True)
        kv = await self.store.get(self.keys.job_progress(c.spec.id, c.shard))
        if kv is not None and kv.mod_revision == c.progress_rev:
            for key in fresh:
                if await self.store.get(key) is not None:
                    raise JobStop(f"{key} was written by someone else before this node committed it; "
                                  "the chunk is not committed twice", "failed")
            return  # not applied (etcd was away): the same commit again
        state = parse_progress(kv.value, kv.key, c.spec, c.shard).state if kv else "deleted"
        raise JobStop(f"the job's checkpoint was changed by someone else (now {state})")

    async def _embed(self, spec: JobSpec, inputs: list[str], k: int) -> list[str]:
        """The chunk's embeddings (base64 float32, one per input), waiting out a busy server."""
        assert self._http is not None
        wait = BUSY_BACKOFF[0]
        body = {"input": inputs, "model": spec.model, "encoding_format": "base64"}
        while True:
            try:
                async with self._http.post(f"{self.url}/v1/embeddings", json=body,
                                           headers={"X-Vigil-Job": spec.id}) as r:
                    doc = await r.json(content_type=None) if r.status in (200, 400) else None
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RecursionError) as e:
                raise JobStop(f"the model server did not answer chunk {k}: {type(e).__name__}") from None
            if status == 200:
                return _vectors(doc, len(inputs), k)
            if status == 400:
                err = doc.get("error") if isinstance(doc, dict) else None
                msg = str(err.get("message", "bad request"))[:300] if isinstance(err, dict) else "bad request"
                raise JobStop(f"the model server refused chunk {k}: {msg}", "failed")
            if status not in (429, 503):
                raise JobStop(f"the model server answered chunk {k} with HTTP {status}", avoid=True)
            await asyncio.sleep(wait)  # busy: the same chunk again, later
            wait = min(BUSY_BACKOFF[1], wait * 2)
            if not self.ready():
                raise JobStop("this node stopped taking work while its model server was busy")

    async def _stop(self, c: Claim, e: JobStop) -> None:
        job, where = c.spec.id, f"shard {c.shard} at chunk {c.progress.next}"
        if e.state:  # the job ends for every node: every shard's checkpoint says so
            try:
                await jobs.end_job(self.store, self.keys, job, e.state, f"{e} (on {self.node})", self.clock.wall())
            except VigilError as err:  # etcd away, or the job deleted meanwhile
                log.warning("batch job %s: could not mark it %s: %s", job, e.state, err)
            self.record("job_failed", f"batch job {job}: failed: {e}", job=job, reason=str(e))
        if e.avoid:
            self.claims.avoid[job] = self.clock.now() + AVOID
        if not e.lost:
            try:
                await self._delete_own(c)
            except StoreError:
                pass  # the lease takes it
        if not e.state:
            self.record("job_lost" if e.lost else "job_released", f"batch job {job}: {e}; {where}",
                        job=job, shard=c.shard, chunk=c.progress.next)


def _too_large(e: StoreError) -> bool:
    """etcd's refusal of a request over --max-request-bytes: "etcdserver: request is too large",
    or, past that limit plus 512 KiB, its gRPC gateway's "received message larger than max"."""
    return "request is too large" in str(e) or "larger than max" in str(e)


def _vectors(doc: object, n: int, k: int) -> list[str]:
    try:
        data = sorted(doc["data"], key=lambda d: d["index"])  # type: ignore[index]
        vectors = [d["embedding"] for d in data]
    except (TypeError, KeyError):
        raise JobStop(f"the model server's answer to chunk {k} is not an embeddings list") from None
    if len(vectors) != n or not all(isinstance(v, str) for v in vectors):
        raise JobStop(f"the model server answered chunk {k} with {len(vectors)} embeddings for {n} inputs")
    return vectors
