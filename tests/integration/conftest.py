from __future__ import annotations

import pytest

from vigil.agent.history import intervals, overlaps, read_records
from vigil.lab import Lab


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
