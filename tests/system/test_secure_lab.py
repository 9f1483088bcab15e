"""Issue 9: `vigil lab up --secure`. etcd speaks only TLS, refuses clients
without a certificate from the cluster CA, and enforces a role per kind of
client: a router's credentials read but never write. The CLI verifies TLS by
default. Failover under load with zero failed requests on a secure cluster
(etcd TLS, client certificates, a user and role per node) is the deployment
walkthrough's, on three systemd machines (tests/system/test_deploy_machines.py:
power-off, crash, stop, watchdog, rolling upgrade); the demo's fault sequence
is test_demo.py's, on the plain lab. (This module ran `vigil demo --secure`
too, 87 s of the suite that the deployment test now covers and goes beyond.)"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from vigil.certs import issue
from vigil.errors import StoreError
from vigil.files import read_secret
from vigil.lab import Lab
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys
from vigil.testing.prometheus import Prometheus


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab.up(tmp_path_factory.mktemp("secure") / "lab", 3, secure=True)
    try:
        yield lab
    finally:
        lab.down()


def store_as(lab: Lab, name: str) -> EtcdStore:
    tls = lab.root / "tls"
    return EtcdStore(lab.etcd.endpoints, 2.0, str(tls / "ca.pem"), str(tls / f"{name}.pem"),
                     str(tls / f"{name}.key"), name, read_secret(tls / f"{name}.password", "test"))


def vigil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=60)


def test_plain_http_and_certificate_less_clients_are_refused(lab):
    ep = lab.etcd.endpoints[0]
    assert ep.startswith("https://")
    with pytest.raises(OSError):
        urllib.request.urlopen(ep.replace("https://", "http://") + "/health", timeout=2)
    no_cert = ssl.create_default_context(cafile=str(lab.root / "tls" / "ca.pem"))
    with pytest.raises(OSError) as e:  # the handshake fails: etcd requires a client certificate
        urllib.request.urlopen(ep + "/health", timeout=2, context=no_cert)
    assert "certificate" in str(e.value).lower() or "alert" in str(e.value).lower()


def test_each_role_may_do_only_its_part(lab):
    keys = Keys(lab.cluster)

    async def check() -> None:
        router, agent, operator = store_as(lab, "router"), store_as(lab, "n1"), store_as(lab, "operator")
        try:
            assert (await router.get(keys.leader)) is not None, "a router reads the cluster"
            with pytest.raises(StoreError, match="permission denied"):
                await router.put(keys.prefix + "router-was-here", "x")
            with pytest.raises(StoreError, match="permission denied"):
                await agent.put("/outside/the/prefix", "x")
            for key in (keys.member("n2"), keys.switchover, keys.config):  # review B4: a role per node
                with pytest.raises(StoreError, match="permission denied"):
                    await agent.put(key, "x")
            n2 = await agent.get(keys.member("n2"))
            with pytest.raises(StoreError, match="permission denied"):
                await agent.revoke(n2.lease)
            await operator.put(keys.prefix + "operator-note", "x")
            await operator.delete(keys.prefix + "operator-note")
            tls = lab.root / "tls"
            wrong = EtcdStore(lab.etcd.endpoints, 2.0, str(tls / "ca.pem"), str(tls / "router.pem"),
                              str(tls / "router.key"), "router", "not-the-password")
            with pytest.raises(StoreError, match="refused user 'router'"):
                await wrong.get(keys.leader)
            await wrong.close()
        finally:
            for s in (router, agent, operator):
                await s.close()
    asyncio.run(check())


def test_the_cli_verifies_tls_and_uses_the_operator_identity(lab):
    r = vigil("status", "--json", "--lab", str(lab.root))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["leader"]["name"] == lab.leader()[0]
    r = vigil("status", "--etcd", ",".join(lab.etcd.endpoints), "--cluster", lab.cluster)
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, "no CA: verified, so refused"
    tls = lab.root / "tls"
    args = ["status", "--json", "--etcd", ",".join(lab.etcd.endpoints), "--cluster", lab.cluster,
            "--cacert", str(tls / "ca.pem"), "--cert", str(tls / "operator.pem"),
            "--key", str(tls / "operator.key"), "--user", "operator",
            "--password-file", str(tls / "operator.password")]
    r = vigil(*args)
    assert r.returncode == 1 and "wants a bearer token: give --api-token-file" in r.stderr
    r = vigil(*args, "--api-token-file", str(tls / "operator.api-token"))
    assert r.returncode == 0, r.stderr
    assert all(m["heartbeat_age"] is not None for m in json.loads(r.stdout)["members"])


def test_events_an_operator_causes_name_the_operator(lab):
    old = lab.leader()[0]
    to = next(n.name for n in lab.nodes if n.name != old)
    r = vigil("switchover", "--to", to, "--lab", str(lab.root))
    assert r.returncode == 0, r.stderr
    asked = [e for e in lab.events() if e["kind"] == "switchover_requested"]
    assert asked and asked[-1]["operator"] == "operator" and asked[-1]["subject"] == to
    lab.wait_events(lambda e: e["node"] == old and "requested by operator" in e.get("cause", ""), 10,
                    "the old leader's resignation, naming who asked for it")


def test_agent_api_is_https_and_only_health_is_open(lab):
    node = lab.nodes[0]
    assert node.api_url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(lab.root / "tls" / "ca.pem"))
    with urllib.request.urlopen(node.api_url + "/health", timeout=2, context=ctx) as r:
        assert r.status == 200, "load balancers need no token"
    for path in ("/status", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(node.api_url + path, timeout=2, context=ctx)
        assert e.value.code == 401
    bad = urllib.request.Request(node.api_url + "/status", headers={"Authorization": "Bearer " + "0" * 32})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad, timeout=2, context=ctx)
    assert e.value.code == 401
    assert lab.agent_status(node.name)["node"] == node.name, "the harness's token is taken"
    with pytest.raises(OSError):
        urllib.request.urlopen(node.api_url.replace("https://", "http://") + "/health", timeout=2)


def test_the_support_bundle_holds_no_secret_the_lab_made(lab, tmp_path):
    """`vigil report`: every key, password and token file the secure lab wrote is
    searched for in every file of the bundle, line by line; none is there, while
    the parts support needs are (configurations, status, events, logs, findings)."""
    import tarfile

    out = tmp_path / "bundle.tar.gz"
    r = vigil("report", "--lab", str(lab.root), "--out", str(out), "--kernel-log", "/dev/null")
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert {"MANIFEST.txt", "status.json", "events.json", "diagnose.json", "versions.json"} <= set(files)
    assert {f"config/{n.name}.yaml" for n in lab.nodes} <= set(files)
    assert {f"logs/{n.name}.log" for n in lab.nodes} <= set(files)
    assert json.loads(files["status.json"])["leader"], "the status read with the operator's identity"
    assert "tokens_file" in files["config/n1.yaml"], "the paths stay; only the files' contents are secret"
    secrets = [p for d in (lab.root / "tls", lab.root / "keys") for p in d.iterdir()
               if p.suffix in (".key", ".password", ".api-token") or p.name == "api-tokens.yaml"]
    assert len(secrets) >= 3 * len(lab.nodes), secrets
    everything = "\n".join(files.values())
    for path in secrets:
        for text in path.read_text().splitlines():
            value = text.split("#", 1)[0].split(":", 1)[-1].strip()
            if len(value) >= 12 and not value.startswith("-----"):
                assert value not in everything, f"{path.name}'s {value[:6]}... is in the bundle"
    assert "PRIVATE KEY" not in everything.replace("<redacted>", "")
    root_password = json.loads((lab.root / "lab.json").read_text())["etcd"]["tls"]["password"]
    assert len(root_password) >= 12 and root_password not in everything, "etcd's root password"


def test_certificate_alerts_fire_when_a_certificate_nears_its_end_and_only_then(lab):
    """A real Prometheus scrapes every agent over TLS with the harness's token. n2's
    API certificate is reissued for 7 days (the 14-day warning alone), then for 1
    (both), then for 825 (neither): each alert fires exactly while it should. (The
    metric follows the file, which is what the agent serves once reloaded; the
    running agent keeps serving the certificate it started with.)"""
    cert_alerts = {"VigilCertificateExpiringSoon", "VigilCertificateExpiring"}
    tls = lab.root / "tls"
    prometheus = Prometheus.for_lab(lab)

    def firing() -> set[tuple[str, str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["node"], a["labels"]["certificate"])
                for a in prometheus.alerts() if a["labels"]["alertname"] in cert_alerts}
    cert = x509.load_pem_x509_certificate((tls / "n2-api.pem").read_bytes())
    hosts = [str(ip) for ip in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
             .value.get_values_for_type(x509.IPAddress)]  # the same names, so a restarted agent serves it
    try:
        lab.wait_for(prometheus.ready, 60, "Prometheus scraping every agent over TLS")
        assert firing() == set(), "the lab's certificates are valid for 825 days"
        for days, expect in ((7, {"VigilCertificateExpiringSoon"}), (1, cert_alerts), (825, set())):
            issue(tls, "n2-api", hosts, days=days)
            want = {(name, "n2", "api") for name in expect}
            lab.wait_for(lambda: firing() == want, 30, f"exactly {sorted(expect)} for a {days}-day certificate")
    finally:
        issue(tls, "n2-api", hosts)  # the module's lab goes on with a long-lived one, whatever happened
        prometheus.stop()
