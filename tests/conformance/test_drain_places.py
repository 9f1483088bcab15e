"""The drain budget's places (vigil.store.drain_places) on real etcd and on the
in-memory fake: of two claims made on one reading exactly one is taken,
whichever the order; a claim lives as long as its lease; a give-back is
idempotent; a claim no node of ours wrote holds nothing."""

from __future__ import annotations

import asyncio
import uuid

from tests.conformance.test_store import store  # noqa: F401 - the fixture: memory and etcd
from vigil.store.drain_places import DrainPlaces
from vigil.store.keys import Keys



async def test_two_claims_on_one_reading_one_is_taken(store):  # noqa: F811
    keys = Keys(uuid.uuid4().hex[:8], root="/conf-drain")
    a, b, c = (DrainPlaces(store, keys, n) for n in ("n1", "n2", "n3"))
    lease = (await store.grant(30)).id
    assert await a.read() == ({}, 0)
    (_, ra), (_, rb) = await a.read(), await b.read()
    taken = await asyncio.gather(a.take(ra, 1.7e9, lease), b.take(rb, 1.7e9 + 1, lease))
    assert sorted(taken) == [False, True]
    holders, epoch = await c.read()
    assert list(holders) == (["n1"] if taken[0] else ["n2"]) and epoch > 0
    assert holders[next(iter(holders))].since in (1.7e9, 1.7e9 + 1)
    # a claim on a reading that is still current is taken; one on an old reading is not
    assert await c.take(epoch, 1.7e9 + 2, lease)
    assert not await (b if taken[0] else a).take(epoch, 1.7e9 + 3, lease)
    assert sorted((await c.read())[0]) == sorted(["n3", "n1" if taken[0] else "n2"])
    await c.give_back()
    await c.give_back()  # idempotent
    assert "n3" not in (await c.read())[0]


async def test_a_claim_applied_late_after_its_give_back_is_refused(store):  # noqa: F811
    """A claim whose reply was lost may be applied after the node gave its
    place back (etcd: may or may not apply); the give-back moved the epoch,
    so the late claim fails instead of holding the place for good."""
    keys = Keys(uuid.uuid4().hex[:8], root="/conf-drain")
    a = DrainPlaces(store, keys, "n1")
    lease = (await store.grant(30)).id
    _, epoch = await a.read()
    await a.give_back()
    assert not await a.take(epoch, 1.7e9, lease)
    assert (await a.read())[0] == {}
    await a.hold(1.7e9, lease)  # a hold is unconditional
    assert list((await a.read())[0]) == ["n1"]


async def test_a_claim_lives_as_long_as_its_lease(store):  # noqa: F811
    keys = Keys(uuid.uuid4().hex[:8], root="/conf-drain")
    a = DrainPlaces(store, keys, "n1")
    lease = (await store.grant(30)).id
    assert await a.take((await a.read())[1], 1.7e9, lease)
    assert list((await a.read())[0]) == ["n1"]
    await store.revoke(lease)
    assert (await a.read())[0] == {}


async def test_a_claim_vigil_did_not_write_holds_nothing(store):  # noqa: F811
    keys = Keys(uuid.uuid4().hex[:8], root="/conf-drain")
    a = DrainPlaces(store, keys, "n1")
    for key, value in ((keys.drain_claim("n2"), "not json"), (keys.drain_claim("n3"), '{"since": -1}'),
                       (keys.drain_claims + "x/n4", '{"since": 1}'), (keys.drain_claim("n5"), '{"since": 1.7e9}')):
        await store.put(key, value)
    assert list((await a.read())[0]) == ["n5"]
