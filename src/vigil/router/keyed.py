"""Requests with an Idempotency-Key: at most once across every router of the
cluster and their restarts, for the idempotency window (docs/architecture.md,
"At most once: Idempotency-Key").

Per request (after the IETF draft "The Idempotency-Key HTTP Header Field"
and Stripe): the key is scoped to the caller's Authorization; this router's
memory (vigil.router.idempotency) answers a repeat at once (a replay, or a
wait for the first while it runs here); on a miss the key's marker is
created in etcd BEFORE anything is sent (vigil.store.idem). A marker that was
already there answers instead: `done` replays its kept answer (409 when it
was too large to keep), `in_flight` gets 409 with Retry-After, another body
422. etcd unreachable: 503, never a run that could be a second one.

The owner's work (claim, attempts, settling) runs in a task of its own, which
a client that goes away does not cancel: the attempt finishes and its real
answer is kept for the client's retry. An owner cut off before it recorded an
outcome (its router killed) leaves the marker `in_flight` until the window
ends: its outcome is unknown, and the key is never run again inside it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from vigil.clock import Clock
from vigil.errors import StoreError
from vigil.router.answers import Answered, error, replay
from vigil.router.attempt import AttemptFailed
from vigil.router.http1 import Incoming
from vigil.router.idempotency import IdempotencyCache, Mismatch, Result, fingerprint, keeps, scope
from vigil.store.base import Store
from vigil.store.idem import BadMarker, Claim, IdemMarkers, Marker
from vigil.store.keys import Keys

log = logging.getLogger(__name__)

MAX_KEY = 255  # characters (Stripe's bound); a UUID is 36
RECORD_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds between tries to record an outcome etcd refused
Route = Callable[[Incoming, float], Awaitable[Answered]]


class Refused(Exception):
    """The owner did not run it: waiters on this router get the same answer."""

    def __init__(self, answer: Answered):
        super().__init__(answer.status)
        self.answer = answer


class KeyedRequests:
    """One router's keyed requests. `handle` always returns an answer to write:
    the request's own (run through `route` at most once per key in the window),
    a replay, 409 (in flight elsewhere, outcome unknown, answer not kept), 422
    (another request under the key), 400 (key too long) or 503 (etcd did not
    take the key: nothing sent). `close` when the router stops."""

    def __init__(self, store: Store, cluster: str, router: str, window: float, clock: Clock, route: Route):
        self.cache = IdempotencyCache(window)
        self.markers = IdemMarkers(store, Keys(cluster), window, clock)
        self.router, self.clock, self.route = router, clock, route
        self.pending: set[asyncio.Task] = set()  # owners at work, whether or not their client waits
        self._recording: set[asyncio.Task] = set()  # outcomes etcd did not take at once
        self.draining = False

    def __repr__(self) -> str:
        return f"<KeyedRequests pending={len(self.pending)} cache={len(self.cache)}>"

    async def handle(self, req: Incoming, key: str, t0: float) -> Answered:
        if len(key) > MAX_KEY:
            return error(400, f"Idempotency-Key is {len(key)} characters long; use at most {MAX_KEY} "
                              "(a UUID is 36)")
        digest = scope(key, req.header("Authorization") or "")
        fp = fingerprint(req.method, req.target, req.body)
        prior = self.cache.begin(digest, fp, self.clock.now())
        if isinstance(prior, Mismatch):
            return _mismatch(key, prior.first)
        if isinstance(prior, Result):
            return replay(prior)
        if prior is not None:
            return await _wait(prior)
        if self.draining:
            return self._refuse(digest, _stopping())
        task = asyncio.get_running_loop().create_task(self._own(req, key, digest, fp, t0))
        self.pending.add(task)
        task.add_done_callback(_ended)
        task.add_done_callback(self.pending.discard)
        return await asyncio.shield(task)  # a client gone away leaves the owner at work

    async def drain(self, within: float) -> None:
        """The router stops: take no new key (503), and give the owners at work
        up to `within` seconds to finish and record their outcome, so a retry
        after the restart replays it instead of meeting an unknown outcome."""
        self.draining = True
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=within)

    def close(self) -> None:
        """Stop the owners now (the router stops): their markers stay `in_flight`."""
        self.draining = True
        for task in [*self.pending, *self._recording]:
            task.cancel()

    async def _own(self, req: Incoming, key: str, digest: str, fp: str, t0: float) -> Answered:
        try:
            claim = await self.markers.claim(digest, Marker("in_flight", fp, self.router))
        except StoreError as e:
            return self._refuse(digest, _unrecorded(e))
        except BaseException:  # cancelled: the marker may exist, nothing was sent
            self.cache.abandon(digest, AttemptFailed("reset", "the router stopped"))
            raise
        if not isinstance(claim, Claim):
            return self._answer_from(key, digest, fp, claim)
        answer: Answered | None = None
        try:
            answer = await self.route(req, t0)
        finally:
            if answer is None:  # the router stopped mid-attempt: the marker stays in flight
                self.cache.abandon(digest, AttemptFailed("reset", "the router stopped"))
        await self._settle(digest, fp, claim, answer)
        return answer

    async def _settle(self, digest: str, fp: str, claim: Claim, answer: Answered) -> None:
        """Record the outcome here and in etcd before the client hears it, so its
        next retry, through whichever router, finds it."""
        result = Result(answer.status, tuple(answer.headers), answer.body)
        kept = keeps(answer.status, answer.headers)
        if kept:
            self.cache.finish(digest, result, self.clock.now())
        else:
            self.cache.abandon(digest, Refused(answer))
        if not kept:  # if etcd fails this, the next claim of the key here takes the marker back
            await self._record(digest, claim, None)
            return
        done = Marker("done", fp, self.router, self.markers.claimant, result.status, result.headers,
                      result.body)
        if not await self._record(digest, claim, done):
            task = asyncio.get_running_loop().create_task(self._record_later(digest, claim, done))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

    async def _record(self, digest: str, claim: Claim, done: Marker | None) -> bool:
        """Settle the marker (`done`), or free it (None); False when etcd failed:
        until it is recorded, other routers answer 409 (this one replays)."""
        try:
            if done is None:
                await self.markers.free(claim)
            elif not await self.markers.settle(claim, done):
                log.warning("Idempotency-Key marker %s expired before its outcome was recorded", digest[:12])
            return True
        except StoreError as e:
            log.warning("cannot record an Idempotency-Key outcome in etcd yet (%s): %s", digest[:12], e)
            return False

    async def _record_later(self, digest: str, claim: Claim, done: Marker) -> None:
        for delay in RECORD_RETRIES:  # a settle is guarded by the claim's revision: safe to repeat
            await asyncio.sleep(delay)
            if await self._record(digest, claim, done):
                return

    def _answer_from(self, key: str, digest: str, fp: str, m: Marker | BadMarker) -> Answered:
        if isinstance(m, BadMarker):
            return self._refuse(digest, _conflict(f"its record in etcd is unreadable ({m.reason}), so "
                                                  "its outcome is unknown; use a new key only if you "
                                                  "know it did not run"))
        if m.fp != fp:
            self.cache.mismatches += 1
            return self._refuse(digest, _mismatch(key, " ".join(m.fp.split()[:2])))
        if m.state == "in_flight":
            return self._refuse(digest, _conflict(
                f"a request with it is in flight at router {m.router!r}, or that router stopped before "
                "recording its outcome (then the outcome is unknown until the key expires)", retry=1))
        result = Result(m.status, m.headers, m.body)
        self.cache.finish(digest, result, self.clock.now())
        self.cache.replays += 1
        return replay(result)

    def _refuse(self, digest: str, answer: Answered) -> Answered:
        self.cache.abandon(digest, Refused(answer))
        return answer


def _ended(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:  # its client may be gone: log it here
        log.error("an Idempotency-Key owner failed", exc_info=task.exception())


async def _wait(first: Awaitable[Result]) -> Answered:
    try:
        return replay(await first)
    except Refused as r:
        return r.answer
    except AttemptFailed as e:
        return error(503, f"the first request with this Idempotency-Key got no answer: {e.cause}")


def _mismatch(key: str, first: str) -> Answered:
    return error(422, f"Idempotency-Key {key[:64]!r} was first used with another request ({first} with a "
                      "different body); use a new key for a new request")


def _conflict(why: str, retry: int | None = None) -> Answered:
    out = error(409, f"Idempotency-Key not run again: {why}")
    if retry is not None:
        out.headers.append(("Retry-After", str(retry)))
    return out


def _stopping() -> Answered:
    out = error(503, "this router is stopping: nothing was sent; retry with the same key (through "
                     "another router, or this one once restarted)")
    out.headers.append(("Retry-After", "1"))
    return out


def _unrecorded(e: StoreError) -> Answered:
    out = error(503, "a request with an Idempotency-Key is run only once its key is recorded in etcd, "
                     f"and etcd did not take it ({e}); nothing was sent, retry shortly with the same key")
    out.headers.append(("Retry-After", "1"))
    return out
