"""Issue 22 #4 (review B4): per-node etcd users. A node's credential writes
its own member record, the election key and the records the leader keeps;
it cannot write another node's member record, revoke another node's lease,
request a switchover, change the config or submit a job (etcd answers
"permission denied"). Agents running on those credentials elect, and a
fencer that may not revoke the fenced node's lease removes its leader key
instead, so the takeover does not wait for the lease. A real etcd with auth
on (three members, with TLS and users as the secure lab sets them up)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.agentharness import agents_running
from vigil.agent.stonith import Fencer
from vigil.clock import SystemClock
from vigil.core.view import LeaderInfo
from vigil.errors import StoreError
from vigil.files import read_secret
from vigil.lab import secure as secure_lab
from vigil.lab.etcd import EtcdCluster
from vigil.stonith.devices import FenceDevice
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys
from vigil.store.raft_leader import RaftLeaderApart
from vigil.store.registry import Registry
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_for_value, wait_until

CLUSTER = "roles"
KEYS = Keys(CLUSTER)
NODES = ("n1", "n2", "n3")
HB = shared_keys(*NODES)
DENIED = "permission denied"


@pytest.fixture(scope="module")
def etcd():
    """Three etcd members with TLS and auth on, users and roles as the secure lab makes them."""
    root = Path(tempfile.mkdtemp(prefix="vigil-etcd-roles-"))
    cluster = EtcdCluster.plan(root, 3, tls=secure_lab.plan_tls(root, [], list(NODES)))
    cluster.start()
    try:
        cluster.wait_healthy(30)
        secure_lab.enable(cluster, root, CLUSTER, list(NODES))
        cluster.root = root
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def as_user(etcd, name: str) -> EtcdStore:
    b = secure_lab.etcd_block(etcd.root, etcd.endpoints, name)
    return EtcdStore(b["endpoints"], 5.0, b["ca_file"], b["cert_file"], b["key_file"], name,
                     read_secret(Path(b["password_file"]), "test"))


async def test_a_nodes_credential_writes_its_own_records_and_no_one_elses(etcd):
    n1, n2, operator = as_user(etcd, "n1"), as_user(etcd, "n2"), as_user(etcd, "operator")
    lease1, lease2 = await n1.grant(60), await n2.grant(60)
    try:
        await n1.put(KEYS.member("n1"), json.dumps({"name": "n1"}), lease1.id)
        await n2.put(KEYS.member("n2"), json.dumps({"name": "n2"}), lease2.id)
        ok, _ = await n1.create(KEYS.leader, "n1", lease1.id)
        assert ok, "the election key is every node's"
        for key in (KEYS.state("n2"), KEYS.hold("n2"), KEYS.fence_marker("n2"), KEYS.event("e-n1-1"),
                    KEYS.payload("stream-1"), KEYS.job_progress("j", 0), KEYS.job_result("j", 0)):
            await n1.put(key, "{}")  # what a leader keeps, and records of work, shared by design
            await n1.delete(key)
        refused = {KEYS.member("n2"): "another node's member record", KEYS.switchover: "a switchover request",
                   KEYS.config: "the config", KEYS.job_spec("j"): "a job", KEYS.job_input("j", 0): "a job's input",
                   "/vigil/other-cluster/leader": "another cluster", "/elsewhere": "outside the prefixes"}
        for key, what in refused.items():
            with pytest.raises(StoreError, match=DENIED):
                await n1.put(key, "x")
            assert key != KEYS.member("n2") or (await n1.get(key)).lease == lease2.id, what
        with pytest.raises(StoreError, match=DENIED):
            await n1.delete(KEYS.member("n2"))
        with pytest.raises(StoreError, match=DENIED):  # it holds n2's member record, which n1 may not write
            await n1.revoke(lease2.id)
        assert await n2.time_to_live(lease2.id) > 0 and await n1.get(KEYS.member("n2")) is not None
        with pytest.raises(StoreError, match=DENIED):  # nor bind its own keys to n2's lease
            await n1.put(KEYS.event("e-n1-2"), "{}", lease2.id)
        await operator.put(KEYS.switchover, json.dumps({"to": "n2", "by": "operator"}))
        await operator.delete(KEYS.switchover)
        router = as_user(etcd, "router")
        assert (await router.get(KEYS.leader)).value == "n1"
        with pytest.raises(StoreError, match=DENIED):
            await router.put(KEYS.state("n1"), "active")
        await router.close()
    finally:
        for s, lease in ((n1, lease1), (n2, lease2)):
            await s.revoke(lease.id)
        for s in (n1, n2, operator):
            await s.close()


class SwitchedOff(FenceDevice):
    """A fencing device whose node is off once asked (the power is not what is tested)."""
    name = "test switch"

    def __init__(self) -> None:
        self.state = "on"

    async def status(self) -> str:
        return self.state

    async def power_off(self) -> None:
        self.state = "off"

    async def power_on(self) -> None:
        self.state = "on"


class Fenced:
    """The few Leadership calls a fence makes."""
    def fenced(self, node: str, token: int) -> None:
        self.last = (node, token)


async def test_a_fencer_that_may_not_revoke_the_lease_removes_the_leader_key(etcd):
    n1, n2 = as_user(etcd, "n1"), as_user(etcd, "n2")
    lease1, lease2 = await n1.grant(60), await n2.grant(60)
    events: list[tuple[str, str]] = []
    try:
        await n2.put(KEYS.member("n2"), json.dumps({"name": "n2"}), lease2.id)
        await n2.delete(KEYS.leader)
        ok, kv = await n2.create(KEYS.leader, "n2", lease2.id)
        assert ok
        fencer = Fencer("n1", {}, SystemClock(), lambda kind, cause, **_: events.append((kind, cause)),
                        Registry(n1, KEYS), n1, Fenced())
        fencer.devices = {"n2": [SwitchedOff()]}
        assert await fencer.fence_leader(LeaderInfo("n2", kv.create_revision, lease2.id), "test", lease1.id)
        assert await n1.get(KEYS.leader) is None, "the takeover need not wait for n2's lease"
        assert await n1.time_to_live(lease2.id) > 0, "the lease itself stays n2's (and an operator's)"
        fenced = [c for k, c in events if k == "node_fenced"]
        assert fenced and "leader key removed" in fenced[0], events
        ok, _ = await n1.create(KEYS.leader, "n1", lease1.id)
        assert ok
    finally:
        if kv := await n1.get(KEYS.leader):
            await n1.delete_if_created(KEYS.leader, kv.create_revision)
        for s, lease in ((n1, lease1), (n2, lease2)):
            await s.revoke(lease.id)
            await s.close()


async def test_agents_on_per_node_credentials_elect_and_hand_over(tmp_path, etcd):
    async with agents_running(tmp_path, CLUSTER, NODES[:2], HB,
                              lambda node: secure_lab.etcd_block(etcd.root, etcd.endpoints, node)) as agents:
        def leader():
            return next((a for a in agents if a.is_leader()), None)
        first = await wait_until(leader, 30, "a leader elected on per-node credentials")
        assert all(a.reconciler.failing is None for a in agents), [a.reconciler.failing for a in agents]
        other = next(a for a in agents if a is not first)
        await wait_until(lambda: all(a.reconciler.snapshot and a.reconciler.snapshot.states.get(o.cfg.node)
                                     for a in agents for o in agents), 30, "the leader writes every state")
        operator = as_user(etcd, "operator")
        try:  # as `vigil switchover` does: the operator's request, which no node's credential can write
            lease = await operator.grant(10)
            await Registry(operator, KEYS).request_switchover(other.cfg.node, "operator", lease.id)
            await wait_until(other.is_leader, 30, "the switchover target to take over")
            await operator.revoke(lease.id)
        finally:
            await operator.close()
        assert all(a.reconciler.failing is None for a in agents), [a.reconciler.failing for a in agents]


def test_the_cli_sets_up_a_role_per_agent_and_names_a_bad_user(tmp_path):
    """`vigil etcd-auth init` on a fresh etcd: each --agent gets its own role; a user
    name etcd roles cannot hold is refused before anything is created."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 1)
    cluster.start()
    try:
        cluster.wait_healthy(30)
        base = [sys.executable, "-m", "vigil", "etcd-auth", "init", "--etcd", cluster.endpoints[0],
                "--cluster", CLUSTER, "--out", str(tmp_path / "pw")]
        r = subprocess.run([*base, "--agent", "n1", "--agent", "bad name"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "user 'bad name'" in r.stderr and "Traceback" not in r.stderr
        r = subprocess.run([*base, "--agent", "n1", "--agent", "n2", "--operator", "operator"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

        async def roles() -> dict:
            store = EtcdStore(cluster.endpoints, 5.0, user="root",
                              password=(tmp_path / "pw" / "root.password").read_text().strip())
            try:
                return {u: (await store.call("auth/user/get", {"name": u})).get("roles")
                        for u in ("n1", "n2", "operator")}
            finally:
                await store.close()
        assert asyncio.run(roles()) == {"n1": [f"vigil-{CLUSTER}-node-n1"], "n2": [f"vigil-{CLUSTER}-node-n2"],
                                        "operator": [f"vigil-{CLUSTER}-operator"]}
    finally:
        cluster.stop()


async def test_etcd_34_lets_a_nodes_user_move_the_raft_leader(etcd):
    """Review B-L11: etcd 3.4 (installed here) lets any user transfer raft leadership, so
    `etcd.local_member` works on per-node credentials; 3.5+ allows only root, and then
    RaftLeaderApart says so once and stops (tests/unit/test_raft_leader_auth.py)."""
    n1 = as_user(etcd, "n1")

    async def raft_leader() -> str | None:
        leader, _, names = await n1.raft_status()
        return names.get(leader)
    async def elected() -> bool:
        return await raft_leader() is not None
    try:
        await wait_for_value(elected, True, 30)
        lead = await raft_leader()
        done = await RaftLeaderApart(n1, lead).check()
        assert done.moved_to not in (None, lead) and done.problem is None

        async def moved() -> bool:
            return await raft_leader() == done.moved_to
        await wait_for_value(moved, True, 30)
    finally:
        await n1.close()
