"""A router's etcd role under auth (one real etcd member): it records its
Idempotency-Key markers in /vigil-idem/<cluster>/ and still may not change the
cluster. Without the grant every keyed request would get 503 (fail closed)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from vigil.errors import StoreError
from vigil.lab.etcd import EtcdCluster
from vigil.store.etcd import EtcdStore
from vigil.store.etcd_auth import enable_auth
from vigil.store.idem import Claim, IdemMarkers, Marker
from vigil.store.keys import Keys
from vigil.testing import FakeClock


async def test_a_routers_role_writes_its_markers_and_nothing_of_the_cluster():
    root = Path(tempfile.mkdtemp(prefix="vigil-idem-auth-"))
    etcd = EtcdCluster.plan(root, n=1)
    etcd.start()
    try:
        etcd.wait_healthy(30)
        admin = EtcdStore(etcd.endpoints, 5.0)
        await enable_auth(admin, "c", {"r1": ("router", "router-pw")}, "root-pw")
        await admin.close()
        router = EtcdStore(etcd.endpoints, 5.0, user="r1", password="router-pw")
        try:
            markers = IdemMarkers(router, Keys("c"), 600.0, FakeClock())
            claim = await markers.claim("d" * 64, Marker("in_flight", "POST /v1/pay x", "r1"))
            assert isinstance(claim, Claim)
            assert await markers.settle(claim, Marker("done", "POST /v1/pay x", "r1", status=200, body=b"{}"))
            assert (await markers.read("d" * 64)).body == b"{}"
            with pytest.raises(StoreError, match="permission denied"):
                await router.put(Keys("c").switchover, '{"to": "n2"}')
        finally:
            await router.close()
    finally:
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
