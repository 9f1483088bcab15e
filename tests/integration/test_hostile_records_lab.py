"""Issue 22 #1 (review B1), on a real lab (3 etcd members, 3 agents, a router):
arbitrary values written under every key family the agents and the router
read (any bytes, any JSON, 400-digit integers, NaN, nesting 100,000 deep,
300 KB strings) stop nothing. Then the leader is SIGKILLed: a new leader is
elected, every survivor stays healthy, the router keeps its membership.

One lab, one drawn batch of values (hypothesis draws them once, derandomized,
without shrinking: a lab is too slow to rerun); the parsers themselves are
fuzzed with 2,000 examples each in tests/fuzz/test_fuzz_records.py."""

from __future__ import annotations

import json
import urllib.request

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.fuzz.test_fuzz_records import JSON, deep
from tests.integration.conftest import leader_of
from vigil.lab import Lab
from vigil.store.keys import Keys

# Values no Vigil component writes. (A record Vigil does write stays in force
# whoever wrote it: a well-formed failed fencing marker holds every node back
# by design, and one node's credential forging records is review B4's matter.)
VALUES = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    JSON.map(json.dumps),
    st.tuples(st.integers(1, 100_000), st.integers(0, 2)).map(lambda t: deep(*t)),
    st.integers(0, 300_000).map(lambda n: json.dumps("x" * n)),
    st.sampled_from(["1" + "0" * 400, '{"started_at": 1' + "0" * 400 + "}", '{"until": NaN}', "1e999", ""]),
)
NAMES = st.sampled_from(["zz-not-a-node", "n2", "n3", "n9"]) | st.text(min_size=1, max_size=70).filter(
    lambda s: "/" not in s)


def families(k: Keys, name: str) -> list[str]:
    """A key of every family the agents and the router read, for `name`."""
    return [k.member(name), k.state(name), k.fence_marker(name), k.hold(name), k.payload(name),
            k.event(name), k.switchover, k.config, k.job_spec(name), k.job_progress(name, 1),
            k.job_input(name, 0), k.job_result(name, 0)]


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def drawn(n: int) -> list[tuple[str, str]]:
    """`n` distinct (name, value) pairs as hypothesis draws them (derandomized: the same every run)."""
    out: list[tuple[str, str]] = []

    @settings(max_examples=4 * n, phases=[Phase.generate], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.tuples(NAMES, VALUES))
    def collect(pair: tuple[str, str]) -> None:
        if pair not in out and len(out) < n:
            out.append(pair)
    collect()
    return out


def test_hostile_values_under_every_key_family_then_a_leader_kill(tmp_path):
    batch = drawn(50)
    lab = Lab.up(tmp_path / "lab", 3, router=True)
    try:
        k = Keys(lab.cluster)
        first, token = leader_of(lab)
        writes = [(key, value) for name, value in batch for key in families(k, name)]

        async def write(store):
            for key, value in writes:
                await store.put(key, value)
            await store.put(k.leader, '{"leader": 1' + "0" * 400 + "}")  # over the leader's own key
        lab.with_store(write)
        assert len(writes) >= 500
        # The lease-less key someone wrote over the leader's is no election's: a leader is elected again.
        second, token = leader_of(lab, above=token)
        lab.wait_for(lambda: all((lab.agent_status(n.name) or {}).get("cycles", 0) > 0 for n in lab.nodes),
                     15, "every agent deciding")
        lab.kill_node(second)
        third, _ = leader_of(lab, other_than=second, above=token)
        survivors = [n for n in lab.nodes if n.name != second]

        def healthy() -> bool:
            return all(get(n.api_url + "/health")[0] == 200 for n in survivors)
        lab.wait_for(healthy, 15, "every survivor healthy")
        for n in survivors:
            st_ = lab.agent_status(n.name)
            assert st_["healthy"] and "cycle failed" not in st_["decision"], st_
        lab.wait_events(lambda e: e["kind"] == "bad_record", 10, "a bad_record event")
        assert "decision_loop_failed" not in [e["kind"] for e in lab.events()]
        code, router = get(lab.router.admin_url + "/_vigil/status")
        assert code == 200 and router["etcd_ok"] and router["membership_failures"] == 0, router
        assert {n.name for n in survivors} <= {b for b, s in router["backends"].items() if s["alive"]}
        assert third in {n.name for n in survivors}
    finally:
        lab.down()
