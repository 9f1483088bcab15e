from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vigil.agent.history import read_records
from vigil.core.history import intervals, overlaps
from vigil.lab import Lab


# Lab tests that assert no timing (records, auth, idempotency, the router's limits,
# the package build): scripts/test.sh runs them two at a time on the suite's 2 cores.
# Every other lab test (failover or detection times, load without a failed request,
# chaos, the demo, booting machines) runs alone, as a machine of its own would.
SHARES_CPU = frozenset({
    "test_actuator",
    "test_bad_records",
    "test_batch_jobs",
    "test_config_reload",
    "test_continue_sign",
    "test_etcd_auth_apply",
    "test_etcd_roles",
    "test_etcd_watch_resume",
    "test_fence_devices",
    "test_hostile_records_lab",
    "test_idempotency_auth",
    "test_idempotency_cluster",
    "test_idempotency_router",
    "test_inference_user",
    "test_job_records_hostile",
    "test_leader_key_trust",
    "test_lease_expiry",
    "test_package",  # builds and inspects the .deb and wheel: CPU, but no timing
    "test_payload_ownership",
    "test_router_http1",
    "test_router_limits",
    "test_router_membership",
    "test_router_tracing",
    "test_router_upstream",
    "test_stream_resume",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SHARES_CPU:
            item.add_marker(pytest.mark.shares_cpu)


@pytest.fixture
def lab(tmp_path):
    """A fresh 3-node lab (3 etcd members, 3 agents); torn down even on failure.
    After the test, the leadership histories of every agent must not overlap."""
    lab = Lab.up(tmp_path / "lab", 3)
    try:
        yield lab
        ivs = intervals(read_records(lab.history_files()))
        assert ivs, "some leadership was recorded"
        assert overlaps(ivs) == [], "two nodes held leadership at the same time"
    finally:
        lab.down()


def diagnose(lab: Lab, kernel_log: str = "/dev/null", corosync_log: str = "/dev/null") -> list[dict]:
    """`vigil diagnose --lab`'s findings, most important first (the lab's kernel and
    corosync logs: /dev/null, none, since the labs share this host's)."""
    r = subprocess.run([sys.executable, "-m", "vigil", "diagnose", "--lab", str(lab.root), "--json", "--limit", "0",
                        "--kernel-log", kernel_log, "--corosync-log", corosync_log],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)["findings"]


def leader_of(lab: Lab, other_than: str | None = None, above: int = 0):
    """Wait (generously) for a leader key not held by `other_than` with token > `above`."""
    def ok():
        cur = lab.leader()
        return cur if cur and cur[0] != other_than and cur[1] > above else None
    return lab.wait_for(ok, 15, f"a new leader (not {other_than}, token > {above})")


@pytest.fixture(scope="module")
def model_lab(tmp_path_factory):
    """3 nodes with real all-MiniLM-L6-v2 model servers and a router, shared by
    a module; each test leaves it as it found it (every node ready)."""
    lab = Lab.up(tmp_path_factory.mktemp("model-lab") / "lab", 3, model=True, router=True)
    try:
        yield lab
    finally:
        lab.down()
