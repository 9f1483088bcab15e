from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from vigil.testing.sim_cluster import quiet_logs


@pytest.fixture
def sim_dir():
    """The agents' data directories, in memory where the machine has /dev/shm:
    an hour of leadership history is thousands of appends and fsyncs."""
    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="vigil-sim-", dir=shm if shm.is_dir() else None))
    quiet_logs()
    yield d
    shutil.rmtree(d, ignore_errors=True)
