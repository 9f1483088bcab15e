"""What the router learns from etcd (review B1, B5, B-L8), in-process on the
in-memory store (held to etcd by the conformance suite) against real HTTP
backends that heartbeat as their agents would (tests/integration/routerharness):

- one bad record costs only itself: the rest are learnt, traffic flows and
  the watch runs (B1: a 400-digit integer froze the whole membership);
- a member record is a claim: only a key-ring member the router has heard,
  at an address in the cluster's networks, gets traffic (B5);
- names an etcd writer invents are bounded and forgotten (B-L8).
"""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

import vigil.router.membership as membership
from tests.integration.routerharness import router_front, serve
from vigil.procs import free_ports
from vigil.router.metrics import status_document
from vigil.store.keys import Keys
from vigil.core.routing import NEVER_HEARD
from vigil.identity import read_ring_doc, write_ring
from vigil.testing.heartbeats import member_record
from vigil.testing.keys import heartbeat_keys
from vigil.testing.wait import wait_until

HUGE_INT = '{"started_at": 1' + "0" * 400 + "}"  # the review's reproduction: float() overflowed


def counting(hits: list[str], name: str) -> web.Application:
    async def embed(_: web.Request) -> web.Response:
        hits.append(name)
        return web.json_response({"data": [], "by": name})
    app = web.Application()
    app.add_routes([web.post("/v1/embeddings", embed)])
    return app


async def answered_by(url: str, n: int) -> list[str]:
    nodes = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            async with http.post(url + "/v1/embeddings", json={"input": "x"}) as r:
                assert r.status == 200, await r.text()
                nodes.append(r.headers["X-Vigil-Node"])
    return nodes


def url_record(url: str, **extra) -> str:
    return json.dumps(member_record(url, **extra))


async def test_a_record_with_a_400_digit_integer_costs_only_itself_and_the_watch_runs():
    hits: list[str] = []
    async with router_front({"n1": counting(hits, "n1")}, ring=("n0",),
                            before={"members/n0": HUGE_INT}) as f:  # n0 sorts before n1
        m = f.router.membership
        assert Keys("d").member("n0") in m.bad_records and m.failures == 0
        assert await answered_by(f.url, 3) == ["n1"] * 3
        n1 = Keys("d").member("n1")
        url = f.router.table.backends["n1"].url
        await f.store.put(n1, url_record(url, ready=False))
        await wait_until(lambda: not f.router.table.backends["n1"].ready, 10, "the watch to see n1 not ready")
        await f.store.put(Keys("d").member("n0"), "[" * 100_000)  # and a bad record through the watch
        await f.store.put(n1, url_record(url))
        await wait_until(lambda: f.router.table.backends["n1"].ready, 10, "the watch to see n1 back")
        assert m.failures == 0 and m.etcd_ok


# Every kind of value a member record can hold that no agent writes; each key
# sorts before the good member's, whose record must still be learnt.
BAD = {
    "b00": "not json {",
    "b01": "[" * 100_000,  # deep
    "b02": url_record("http://127.0.0.1:9", pad="x" * 2_000_000),  # huge
    "b03": json.dumps({"inference": {"url": 5, "ready": "yes"}}),
    "b04": json.dumps({"heartbeat": {"addresses": "127.0.0.1"}, "inference": {"url": "http://127.0.0.1:9"}}),
    "b05": json.dumps({"priority": True}),
    "b06": '{"started_at": 1e999}',
    "b07": '{"incarnation": NaN}',
    "b08": json.dumps(["a list"]),
    "b09": '{"version": "\\ud800"}',  # a lone surrogate
    "b10": url_record("http://[::1:80"),
    "b11": url_record("http://127.0.0.1:99999"),
    "b12": url_record("http://169.254.169.254:80"),  # cloud metadata
    "b13": "",
    "b14": json.dumps({"health": {"verdict": 5}}),
    "b15": json.dumps({"suspects": [1, 2]}),
    "b16": HUGE_INT,
    "b17": '{"inference": {"url": "http://127.0.0.1:9", "ready": true, "x": ' + "[" * 40 + "1" + "]" * 40 + "}}",
    "b18": json.dumps({"pid": -5, "priority": 10 ** 6}),  # numbers out of range
}


async def test_every_kind_of_bad_member_record_is_skipped_and_the_rest_are_learnt():
    hits: list[str] = []
    before = {f"members/{name}": value for name, value in BAD.items()}
    before["state/n1"] = "x" * 100_000  # a bad decided state: ignored, n1 keeps serving
    async with router_front({"n1": counting(hits, "n1")}, ring=tuple(BAD), before=before) as f:
        m = f.router.membership
        missing = [n for n in BAD if Keys("d").member(n) not in m.bad_records]
        assert missing == [], f"each bad record is named: {m.bad_records}"
        assert Keys("d").state("n1") in m.bad_records
        assert [b.name for b in f.router.table.eligible(0.0)] == ["n1"] and m.failures == 0
        assert await answered_by(f.url, 3) == ["n1"] * 3


async def test_a_record_no_parser_foresaw_still_costs_only_itself(monkeypatch):
    """The guard is per record, not per parser: a parser bug stops one record."""
    real = membership.parse_member_kv

    def buggy(key: str, text: str):
        if key.endswith("/n0"):
            raise RuntimeError("a parser bug")
        return real(key, text)
    monkeypatch.setattr(membership, "parse_member_kv", buggy)
    hits: list[str] = []
    async with router_front({"n1": counting(hits, "n1")}, ring=("n0",),
                            before={"members/n0": url_record("http://127.0.0.1:9")}) as f:
        m = f.router.membership
        assert "RuntimeError: a parser bug" in m.bad_records[Keys("d").member("n0")]
        assert await answered_by(f.url, 2) == ["n1"] * 2 and m.failures == 0


async def test_only_heard_key_ring_members_at_cluster_addresses_get_traffic():
    hits: list[str] = []
    stranger_port, silent_port = free_ports(2)
    runners = [await serve(counting(hits, "evil"), stranger_port), await serve(counting(hits, "n2"), silent_port)]
    before = {"members/evil": url_record(f"http://127.0.0.1:{stranger_port}"),  # not in the key ring
              "members/n2": url_record(f"http://127.0.0.1:{silent_port}"),  # in it, never heard
              "members/n3": url_record("http://203.0.113.7:80")}  # heard, but an outside host
    try:
        async with router_front({"n1": counting(hits, "n1")}, ring=("n2", "n3"), before=before) as f:
            m, t = f.router.membership, f.router.table
            f.beats.start_node("n3")
            await wait_until(lambda: t.backends["n3"].heard, 10, "n3 to be heard")
            assert "evil" not in t.backends and "evil" not in m.peers.peers
            assert "not in the key ring" in m.bad_records[Keys("d").member("evil")]
            assert t.backends["n2"].why_not(0.0) == NEVER_HEARD
            assert t.backends["n3"].why_not(0.0).startswith(
                "refused: 203.0.113.7 is outside the cluster's networks (127.0.0.0/24)")
            assert await answered_by(f.url, 10) == ["n1"] * 10 and hits == ["n1"] * 10
            doc = status_document(f.router.state())  # what an operator sees on the admin listener
            assert doc["cluster_networks"] == ["127.0.0.0/24"] and doc["membership"] == "heard"
            assert doc["backends"]["n2"]["why_not"] == NEVER_HEARD and not doc["backends"]["n2"]["heard"]
            f.beats.start_node("n2")  # heard now: it serves
            await wait_until(lambda: t.backends["n2"].why_not(0.0) is None, 10, "n2 heard")
            assert "n2" in await answered_by(f.url, 6)
    finally:
        for r in runners:
            await r.cleanup()


async def test_etcd_only_routes_on_records_alone_within_backends_allow():
    hits: list[str] = []
    (port,) = free_ports(1)
    runner = await serve(counting(hits, "x9"), port)
    before = {"members/x9": url_record(f"http://127.0.0.1:{port}"),  # never heartbeats, not in the ring
              "members/x8": url_record("http://203.0.113.7:80")}
    try:
        async with router_front({"n1": counting(hits, "n1")}, before=before, membership="etcd_only",
                                backends={"allow": ["127.0.0.0/8"]}) as f:
            await wait_until(lambda: "x9" in {b.name for b in f.router.table.eligible(0.0)}, 10, "x9 learnt")
            assert "not in backends.allow" in f.router.membership.bad_records[Keys("d").member("x8")]
            assert "x9" in await answered_by(f.url, 6)
    finally:
        await runner.cleanup()


def fakes(n: int) -> dict[str, str]:
    return {f"members/fake{i:04d}": url_record("http://127.0.0.1:9") for i in range(n)}


async def test_names_an_etcd_writer_invents_are_never_tracked():
    """B-L8, membership: heard: only key-ring names take memory."""
    async with router_front({"n1": counting([], "n1")}, before=fakes(600)) as f:
        m = f.router.membership
        assert set(f.router.table.backends) == set(m.peers.peers) == set(m.receiver.guards) == {"n1"}
        assert len(m.bad_records) == membership.MAX_BAD_RECORDS
        assert m.bad_unlisted == 600 - membership.MAX_BAD_RECORDS
        assert b"fake" not in f.router.metrics.render()


async def test_etcd_only_tracks_a_bounded_number_of_other_names_and_forgets_them():
    """B-L8, membership: etcd_only: at most MAX_OTHER_NAMES names outside the
    ring at once, each forgotten (table, peers, guards, labels) when its record goes."""
    cap = membership.MAX_OTHER_NAMES
    async with router_front({"n1": counting([], "n1")}, before=fakes(cap + 50), membership="etcd_only",
                            backends={"allow": ["127.0.0.0/8"]}) as f:
        m, t = f.router.membership, f.router.table
        assert len(t.backends) == 1 + cap and len(m.peers.peers) == 1 + cap
        assert b'node="fake0000"' in f.router.metrics.render()
        await f.store.delete_prefix(Keys("d").members + "fake")
        await wait_until(lambda: set(t.backends) == {"n1"}, 10, "the invented names forgotten")
        assert set(m.peers.peers) == set(m.receiver.guards) == set(m.receiver.sources) == {"n1"}
        assert b"fake" not in f.router.metrics.render() and m.bad_records == {}
        await f.store.put(Keys("d").member("late"), url_record("http://127.0.0.1:9"))
        await wait_until(lambda: "late" in t.backends, 10, "room again for a new name")


async def test_a_key_reload_learns_members_that_joined_the_ring_and_forgets_those_that_left(tmp_path):
    keys = heartbeat_keys(tmp_path, ["n1", "n2"])
    ring = tmp_path / "cluster.keyring"
    full = read_ring_doc(ring)
    write_ring(ring, {"n1": full["n1"]})  # n2 not in the ring yet
    hits: list[str] = []
    (port,) = free_ports(1)
    runner = await serve(counting(hits, "n2"), port)
    try:
        async with router_front({"n1": counting(hits, "n1")}, keys=keys, ring=("n2",),
                                before={"members/n2": url_record(f"http://127.0.0.1:{port}")}) as f:
            m, t = f.router.membership, f.router.table
            assert "n2" not in t.backends and "not in the key ring" in m.bad_records[Keys("d").member("n2")]
            f.beats.start_node("n2")
            write_ring(ring, full)
            assert m.reload_keys()
            await wait_until(lambda: "n2" in t.backends and t.backends["n2"].why_not(0.0) is None, 10,
                             "n2 learnt once the ring holds it")
            write_ring(ring, {"n2": full["n2"]})
            assert m.reload_keys()
            assert "n1" not in t.backends and "n1" not in m.peers.peers and "n1" not in m.receiver.guards
            assert await answered_by(f.url, 3) == ["n2"] * 3
    finally:
        await runner.cleanup()
