"""Shared fixtures. Real components are required: a missing etcd binary is a
test failure, never a skip."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from vigil.lab.etcd import EtcdCluster

# CI gates on the same examples every run (a fuzz target never fails a
# submission by luck); `pytest --hypothesis-profile=explore` draws new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def etcd_cluster():
    """A real 3-member etcd cluster on loopback, for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="vigil-etcd-"))
    cluster = EtcdCluster.plan(root)  # raises (fails the test) if no etcd binary is installed
    cluster.start()
    try:
        cluster.wait_healthy(30)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
