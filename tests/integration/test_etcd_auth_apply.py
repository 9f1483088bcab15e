"""Issue 23 #3: `vigil etcd-auth apply` creates the users `vigil init` planned,
with the passwords in the bundles, on a real etcd with TLS and client
certificates made by `vigil init`; run again (auth on by then) it logs in as
root, and after `--remove-node` it deletes that node's users."""

from __future__ import annotations

import asyncio

import yaml

from vigil.cli.main import main
from vigil.errors import StoreError
from vigil.lab.etcd import EtcdCluster, EtcdTLS
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys


def _inventory(n: int) -> dict:
    return {"cluster": "prod", "nodes": [{"name": f"n{i}", "address": f"127.0.0.{i}", "etcd": i == 1}
                                         for i in range(1, n + 1)]}


def _init(tmp_path, n: int, *flags: str) -> None:
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(_inventory(n)))
    assert main(["init", "--inventory", str(tmp_path / "inv.yaml"), "--out", str(tmp_path / "out"), *flags]) == 0


def _apply(tmp_path, endpoints: list[str]) -> None:
    users = tmp_path / "out/admin/etcd-users.yaml"
    doc = yaml.safe_load(users.read_text())
    doc["endpoints"] = endpoints  # this test's etcd, on a free port
    users.write_text(yaml.safe_dump(doc))
    assert main(["etcd-auth", "apply", "--users", str(users)]) == 0


def _store(tmp_path, etcd: EtcdCluster, user: str) -> EtcdStore:
    s = tmp_path / "out/secrets"
    client = user if not user.startswith("root") else "operator"
    return EtcdStore(etcd.endpoints, 5.0, str(s / "tls/ca.pem"), str(s / f"tls/{client}.pem"),
                     str(s / f"tls/{client}.key"), user, (s / f"passwords/{user}.password").read_text().strip())


async def _may_write(store: EtcdStore, key: str) -> bool:
    try:
        await store.put(key, "x")
        return True
    except StoreError as e:
        assert "permission denied" in str(e), e
        return False


def test_users_from_init_are_created_reapplied_and_removed(tmp_path):
    _init(tmp_path, 3)
    s = tmp_path / "out/secrets/tls"
    etcd = EtcdCluster.plan(tmp_path / "etcd", 1, tls=EtcdTLS(str(s / "ca.pem"), str(s / "etcd-n1.pem"),
                                                                str(s / "etcd-n1.key"), str(s / "operator.pem"),
                                                                str(s / "operator.key")))
    etcd.start()
    etcd.wait_healthy()
    try:
        _apply(tmp_path, etcd.endpoints)
        keys = Keys("prod")

        async def check(expect_n3: bool) -> None:
            n1 = _store(tmp_path, etcd, "n1")
            try:
                assert await _may_write(n1, keys.member("n1"))
                assert not await _may_write(n1, keys.member("n2")), "one node's user never writes another's record"
            finally:
                await n1.close()
            n3 = _store(tmp_path, etcd, "n3") if expect_n3 else None
            if n3:
                try:
                    assert await _may_write(n3, keys.member("n3"))
                finally:
                    await n3.close()
        asyncio.run(check(True))
        _apply(tmp_path, etcd.endpoints)  # auth is on now: apply logs in as root and changes nothing
        asyncio.run(check(True))
        (tmp_path / "out/secrets/passwords/n3.password").rename(tmp_path / "n3.password")
        _init(tmp_path, 2, "--remove-node", "n3")
        _apply(tmp_path, etcd.endpoints)

        async def n3_gone() -> None:
            s3 = EtcdStore(etcd.endpoints, 5.0, str(s / "ca.pem"), str(s / "operator.pem"),
                           str(s / "operator.key"), "n3", (tmp_path / "n3.password").read_text().strip())
            try:
                await s3.put(keys.member("n3"), "x")
                raise AssertionError("a removed node's user still writes")
            except StoreError as e:
                assert "authentication failed" in str(e) or "invalid" in str(e), e
            finally:
                await s3.close()
        asyncio.run(n3_gone())
    finally:
        etcd.stop()
