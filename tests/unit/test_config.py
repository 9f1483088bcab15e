import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vigil.config import load_config, parse_config
from vigil.errors import ConfigError
from vigil.identity import load_ring
from vigil.testing.keys import heartbeat_keys, shared_keys

KEYS = shared_keys("n1", "n2")
KEY = KEYS["n1"]


def good(**over):
    d = {"cluster": "prod", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
         "heartbeat": {**KEY, "addresses": ["10.0.0.1", "10.1.0.1"],
                       "peers": [{"name": "n2", "addresses": ["10.0.0.2", "10.1.0.2"]}]}}
    d.update(over)
    return d


def test_good_config_and_defaults():
    c = parse_config(good())
    assert c.heartbeat_port == 694 and c.peers[0].port == 694
    assert c.timing.heartbeat_interval == 0.1 and c.timing.lease_ttl == 10
    assert c.keys.signing.node == "n1" and set(c.keys.ring.members) == {"n1", "n2"}
    assert c.addresses == ("10.0.0.1", "10.1.0.1") and c.keys.max_clock_skew == 2.0
    inf = parse_config(good(inference={"url": "http://127.0.0.1:8000", "load_format": "vllm"})).inference
    assert inf.load_path == "/metrics" and inf.stall_window == 10.0 and inf.silence_window == 1.0
    assert c.etcd.local_member is None
    here = parse_config(good(etcd={"endpoints": ["http://127.0.0.1:2379"], "local_member": "etcd1"}))
    assert here.etcd.local_member == "etcd1"


@pytest.mark.parametrize("over, field, words", [
    (dict(node=None), "node", "required"),
    (dict(clustr="x"), "clustr", "did you mean 'cluster'"),
    (dict(priority=5000), "priority", "0 to 1000"),
    (dict(etcd={"endpoints": ["127.0.0.1:2379"]}), "etcd.endpoints[0]", "http(s)://HOST:PORT"),
    (dict(etcd={"endpoints": []}), "etcd.endpoints", "at least one"),
    (dict(etcd={"endpoints": ["http://127.0.0.1:2379"], "local_member": "etcd 1"}), "etcd.local_member",
     "1-64 letters"),
    (dict(heartbeat={"key": "ab" * 32}), "heartbeat.key", "vigil keygen --node"),
    (dict(heartbeat={"keyring_file": KEY["keyring_file"]}), "heartbeat.signing_key_file", "vigil keygen"),
    (dict(heartbeat={**KEY, "max_clock_skew": 0}), "heartbeat.max_clock_skew", "0.1..300"),
    (dict(heartbeat={**KEY, "signing_key_file": KEYS["n2"]["signing_key_file"]}),
     "heartbeat.signing_key_file", "holds n2's keys"),
    (dict(heartbeat={**KEY, "peers": [{"name": "n3", "addresses": ["10.0.0.3"]}]}),
     "heartbeat.keyring_file", "no key for peer n3"),
    (dict(heartbeat={**KEY, "peers": [{"name": "n1", "addresses": ["10.0.0.2"]}]}),
     "heartbeat.peers[0].name", "differ from this node"),
    (dict(heartbeat={**KEY, "addresses": ["1.2.3.4", "5.6.7.8", "9.9.9.9"]}),
     "heartbeat.addresses", "one or two"),
    (dict(timing={"keepalive_interval": 5}), "timing.keepalive_interval", "lease_ttl/3"),
    (dict(timing={"demote_after": 12}), "timing.demote_after", "< lease_ttl"),
    (dict(timing={"lease_ttl": "ten"}), "timing.lease_ttl", "number of seconds"),
    (dict(timing={"etcd_timeout": 1e9}), "timing.etcd_timeout", "at most 60"),
    (dict(timing={"heartbeat_interval": float("inf")}), "timing.heartbeat_interval", "at most 10"),
    (dict(timing={"phi_threshold": float("nan")}), "timing.phi_threshold", "> 0"),
    (dict(controller={"gateway": "http://127.0.0.1:1", "interval": 1e6}), "controller.interval", "0.01..60"),
    (dict(fencing={"topology": {"n2": [{"type": "ipmi", "host": "127.0.0.1", "user": "a", "timeout": 1e9}]}}),
     "fencing.topology.n2[0].timeout", "0.1..120"),
    (dict(api={"port": 70000}), "api.port", "1 to 65535"),
    (dict(api={"cert_file": "/etc/vigil/api.pem"}), "api.cert_file", "give both"),
    (dict(api={"cert_file": "/nonexistent.pem", "key_file": "/nonexistent.key"}), "api.cert_file",
     "vigil certs issue"),
    (dict(api={"tokens_file": "/nonexistent-tokens.yaml"}), "api.tokens_file", "cannot be read"),
    (dict(inference={"url": "http://127.0.0.1:8000", "load_format": "triton"}),
     "inference.load_format", "vigil (GET /v2/load)"),
    (dict(inference={"url": "http://127.0.0.1:8000", "silence_window": 0.1, "load_interval": 0.2}),
     "inference.silence_window", "longer than inference.load_interval"),
    (dict(inference={"url": "http://127.0.0.1:8000", "stall_window": 1e9}),
     "inference.stall_window", "from 0.5 to 3600"),
    (dict(inference={"url": "http://127.0.0.1:8000", "load_path": "v2/load"}),
     "inference.load_path", "a path such as"),
])
def test_bad_values_name_field_and_fix(over, field, words):
    d = good(**over)
    if over.get("node", 1) is None:
        del d["node"]
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    assert e.value.field == field
    assert words in str(e.value)


def test_key_files_are_read_relative_to_config(tmp_path):
    heartbeat_keys(tmp_path / "keys", ["n1"])
    d = good()
    d["heartbeat"] = {"signing_key_file": "keys/n1.key", "keyring_file": "keys/cluster.keyring"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    keys = load_config(tmp_path / "c.yaml").keys
    assert keys.signing.node == "n1" and keys.signing.public(1) == \
        keys.ring.members["n1"][1].public_bytes_raw().hex()


def test_a_ring_without_our_signing_key_is_refused(tmp_path):
    """Peers would refuse every heartbeat: say so at start, not by being fenced."""
    other = heartbeat_keys(tmp_path / "other", ["n1", "n2"])
    with pytest.raises(ConfigError) as e:
        parse_config(good(heartbeat={**KEY, "keyring_file": other["ring"]["keyring_file"]}))
    assert e.value.field == "heartbeat.keyring_file" and "does not hold n1's key 1" in str(e.value)
    assert set(load_ring(other["ring"]["keyring_file"], "x").members) == {"n1", "n2"}


@pytest.mark.parametrize("text", ["cluster: [", "- just a list", "", "cluster: prod\nnode: n1\n"])
def test_agent_rejects_bad_file_with_exit_2_and_starts_nothing(tmp_path, text):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "vigil", "agent", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "configuration error" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_and_bad_cli_args_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vigil", "agent", "--config", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot be read" in r.stderr
    r = subprocess.run([sys.executable, "-m", "vigil", "status", "--bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = subprocess.run([sys.executable, "-m", "vigil", "status"], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "--lab DIR" in r.stderr


def test_check_config_reports_timers(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(yaml.safe_dump(good()))
    r = subprocess.run([sys.executable, "-m", "vigil", "check-config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "suspicion after ~" in r.stdout
    assert "etcd: not reachable now, version not checked" in r.stdout  # nothing listens on :2379


@pytest.mark.parametrize("args, words", [
    (["status", "--lab", "/nonexistent-lab"], "vigil lab up --dir"),
    (["lab", "down", "--dir", "/nonexistent-lab"], "nothing to stop"),
    (["events", "--limit", "-1", "--etcd", "http://127.0.0.1:1", "--cluster", "x"], "positive count"),
    (["lab", "up", "--nodes", "0", "--dir", "/tmp/vigil-never-created"], "1 to 100 nodes"),
    (["lab", "up", "--nodes", "101", "--dir", "/tmp/vigil-never-created"], "1 to 100 nodes"),
    (["lab", "up", "--nodes", "3", "--rack-size", "0", "--dir", "/tmp/vigil-never-created"], "--rack-size"),
    (["plan", "--nodes", "10", "--domains", "0"], "--domains"),
    (["plan", "--check"], "--check needs a node"),
    (["--bogus"], "(see `vigil --help`)"),  # issue 9 #11: it said `vigil vigil --help`
    (["status", "--bogus"], "(see `vigil status --help`)"),
])
def test_bad_cli_input_names_problem_and_fix(args, words):
    r = subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_unreachable_etcd_is_a_clear_failure_not_a_hang():
    r = subprocess.run([sys.executable, "-m", "vigil", "status", "--etcd", "http://127.0.0.1:1",
                        "--cluster", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "etcd did not answer" in r.stderr and "Traceback" not in r.stderr


def test_a_misspelled_secret_is_never_echoed(tmp_path):
    """Issue 9 #7: `pasword: hunter2` was printed back in the error."""
    fencing = {"topology": {"n2": [{"type": "ipmi", "host": "127.0.0.1", "user": "admin",
                                    "pasword": "hunter2"}]}}
    with pytest.raises(ConfigError) as e:
        parse_config(good(fencing=fencing))
    assert "hunter2" not in str(e.value) and "did you mean 'password'" in str(e.value)
    secret = tmp_path / "n1.key"
    secret.write_text("node: n1\nsend: 1\nkeys: {1: hunter2-is-not-hex}\n")
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        parse_config(good(heartbeat={**KEY, "signing_key_file": str(secret)}))
    assert "hunter2" not in str(e.value) and "<hidden>" in str(e.value)


def test_files_others_could_change_are_refused_when_running_as_root(tmp_path):
    import os
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump(good()))
    os.chmod(cfg, 0o666)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert e.value.field == "config file" and f"chmod go-w {cfg}" in str(e.value)
    os.chmod(cfg, 0o644)
    keys = heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    key = Path(keys["n1"]["signing_key_file"])
    os.chown(key, 1000, 0)
    cfg.write_text(yaml.safe_dump(good(heartbeat={**keys["n1"]})))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert e.value.field == "heartbeat.signing_key_file" and "not root" in str(e.value) \
        and "chown root" in str(e.value)
    os.chown(key, 0, 0)
    assert load_config(cfg).keys.signing.node == "n1"


def test_a_yaml_syntax_error_names_the_place_never_the_text(tmp_path):
    """B-L1: PyYAML quotes the lines around an error; a password there was printed."""
    cfg = tmp_path / "node.yaml"
    for text in ("password: S3cretBMC!\n  bad: [", "cluster: prod\n\tpassword: S3cretBMC!\n",
                 "password: 'S3cretBMC!\n"):
        cfg.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        assert "S3cret" not in str(e.value) and "at line " in str(e.value), str(e.value)
        r = subprocess.run([sys.executable, "-m", "vigil", "check-config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "S3cret" not in r.stderr + r.stdout and "not valid YAML" in r.stderr


def test_secrets_others_could_read_and_files_in_a_directory_others_could_write_are_refused(tmp_path):
    """B-L2: signing keys, password and token files and TLS keys must be mode 600 (the
    message says so); a file in a directory others may write could be replaced by rename."""
    keys = heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    key = Path(keys["n1"]["signing_key_file"])
    key.chmod(0o640)
    with pytest.raises(ConfigError) as e:
        parse_config(good(heartbeat={**keys["n1"]}))
    assert e.value.field == "heartbeat.signing_key_file" and f"`chmod 600 {key}`" in str(e.value)
    key.chmod(0o600)
    assert parse_config(good(heartbeat={**keys["n1"]})).keys.signing.node == "n1"
    password = tmp_path / "etcd.password"
    password.write_text("hunter2\n")
    password.chmod(0o604)
    from vigil.files import read_secret
    with pytest.raises(ConfigError, match=r"open to group or others \(mode 604\): `chmod 600 "):
        read_secret(password, "etcd.password_file")
    password.chmod(0o600)
    assert read_secret(password, "etcd.password_file") == "hunter2"
    from vigil.certs import init_ca, issue
    init_ca(tmp_path / "tls")
    cert, tls_key = issue(tmp_path / "tls", "n1-api", ["127.0.0.1"])
    tls_key.chmod(0o644)
    with pytest.raises(ConfigError, match="api.key_file.*chmod 600"):
        parse_config(good(api={"cert_file": str(cert), "key_file": str(tls_key)}))
    etcd = {"endpoints": ["https://127.0.0.1:2379"], "ca_file": str(tmp_path / "tls" / "ca.pem"),
            "cert_file": str(cert), "key_file": str(tls_key)}
    with pytest.raises(ConfigError, match="etcd.key_file.*chmod 600"):
        parse_config(good(etcd=etcd))
    tls_key.chmod(0o600)
    assert parse_config(good(etcd=etcd)).etcd.key_file == str(tls_key)
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = shared / "node.yaml"
    cfg.write_text(yaml.safe_dump(good()))
    shared.chmod(0o777)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "directory of" in str(e.value) and f"chmod go-w {shared}" in str(e.value)
    shared.chmod(0o1777)  # sticky, as /tmp: nobody may replace another's file in it
    assert load_config(cfg).node == "n1"


def test_a_user_other_than_root_accepts_only_its_own_or_roots_files(tmp_path, monkeypatch):
    """B-L2: routers and gateways need not run as root; the checks still hold for them."""
    import os
    from vigil.files import read_secret
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    assert read_secret(token, "--api-token-file") == "t0ken", "root's file"
    os.chown(token, 1000, 0)
    with pytest.raises(ConfigError, match="owned by uid 1000, not root or uid 4321"):
        read_secret(token, "--api-token-file")
    os.chown(token, 4321, 0)
    os.chown(tmp_path, 4321, 0)
    assert read_secret(token, "--api-token-file") == "t0ken", "its own file"
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(token, "--api-token-file")


def test_etcd_credentials_over_plain_http_are_refused(tmp_path):
    """B-L3: the password and every token would cross the network in cleartext."""
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    password.chmod(0o600)
    etcd = {"endpoints": ["https://10.0.0.9:2379", "http://10.0.0.10:2379"], "user": "n1",
            "password_file": str(password), "ca_file": str(password)}
    with pytest.raises(ConfigError) as e:
        parse_config(good(etcd=etcd))
    assert e.value.field == "etcd.user" and "http://10.0.0.10:2379" in str(e.value) and "https://" in str(e.value)
    for args in (["status", "--etcd", "http://127.0.0.1:1", "--cluster", "x", "--user", "op",
                  "--password-file", str(password)],
                 ["actuator-gateway", "--plc", "127.0.0.1:1", "--listen", "1", "--state", str(tmp_path / "s"),
                  "--keyring", str(password), "--etcd", "http://127.0.0.1:1", "--cluster", "x",
                  "--etcd-user", "gateway", "--etcd-password-file", str(password)]):
        r = subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "cleartext" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_api_open_to_the_network_without_tokens_or_tls_is_warned_about(tmp_path, caplog):
    """B-L3: bearer tokens over plain http, or no tokens on a wildcard address."""
    from vigil.config import exposure_warnings
    assert exposure_warnings("127.0.0.1", False, False, "api") == []
    assert "tokens_file is not set" in exposure_warnings("0.0.0.0", False, False, "api")[0]
    assert "cleartext" in exposure_warnings("10.0.0.1", True, False, "admin")[0]
    assert exposure_warnings("10.0.0.1", True, True, "api") == []
    with caplog.at_level("WARNING", logger="vigil.config"):
        parse_config(good(api={"host": "0.0.0.0"}))
    assert any("api.host is 0.0.0.0" in r.getMessage() for r in caplog.records)


def test_a_gateway_that_listens_everywhere_must_be_named(tmp_path):
    """B-L4: commands are signed for one gateway's name; on 0.0.0.0 it cannot guess it."""
    keys = heartbeat_keys(tmp_path / "keys", ["n1"])
    r = subprocess.run([sys.executable, "-m", "vigil", "actuator-gateway", "--plc", "127.0.0.1:1",
                        "--listen", "1", "--host", "0.0.0.0", "--state", str(tmp_path / "s"),
                        "--keyring", keys["n1"]["keyring_file"], "--etcd", "http://127.0.0.1:1",
                        "--cluster", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--name HOST:PORT" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with pytest.raises(ConfigError, match="controller.gateway"):
        parse_config(good(controller={"gateway": "http://:80"}))


def test_an_agents_etcd_user_is_its_node_name(tmp_path):
    """Per-node etcd roles (B4): only the user named as the node may write its member
    record, so an agent configured with another user would fail on every write."""
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    password.chmod(0o600)
    etcd = {"endpoints": ["https://10.0.0.9:2379"], "user": "someone-else",
            "password_file": str(password), "ca_file": str(password)}
    with pytest.raises(ConfigError) as e:
        parse_config(good(etcd=etcd))
    assert e.value.field == "etcd.user" and "vigil etcd-auth init" in str(e.value)
    assert parse_config(good(etcd=etcd | {"user": good()["node"]})).etcd.user == good()["node"]


def test_a_path_with_a_nul_byte_is_named_not_a_crash(tmp_path):
    """Found by the 200,000-example exploring run of the config fuzz targets: a key
    file path of "\\x00" raised ValueError (embedded null byte) from os.stat."""
    for field in ("signing_key_file", "keyring_file"):
        with pytest.raises(ConfigError) as e:
            parse_config(good(heartbeat={**good()["heartbeat"], field: "keys/\x00"}))
        assert e.value.field.endswith(field) and "NUL" in str(e.value)


def test_failure_domains_and_the_detection_topology():
    hb = good()["heartbeat"]
    c = parse_config(good(failure_domain="rack-7", heartbeat={
        **hb, "peers": [{**hb["peers"][0], "failure_domain": "rack-8"}],
        "topology": {"observers": 4, "agreement": 3, "full_mesh_up_to": 24, "domain_mesh_up_to": 12}}))
    assert c.domains() == {"n1": "rack-7", "n2": "rack-8"}
    assert (c.topology.observers, c.topology.agreement, c.topology.full_mesh_up_to) == (4, 3, 24)
    assert parse_config(good()).domains() == {"n1": "default", "n2": "default"}


@pytest.mark.parametrize("topology, field", [
    ({"observers": 0}, "heartbeat.topology.observers"),
    ({"observers": 4, "agreement": 5}, "heartbeat.topology.agreement"),
    ({"domain_mesh_up_to": 40}, "heartbeat.topology.domain_mesh_up_to"),
    ({"observer": 4}, "heartbeat.topology.observer"),
    ({"observers": "8"}, "heartbeat.topology.observers"),
])
def test_a_bad_topology_names_the_field(topology, field):
    with pytest.raises(ConfigError) as e:
        parse_config(good(heartbeat={**good()["heartbeat"], "topology": topology}))
    assert e.value.field == field, str(e.value)


def test_a_bad_failure_domain_names_the_field():
    with pytest.raises(ConfigError) as e:
        parse_config(good(failure_domain="rack 7/a"))
    assert e.value.field == "failure_domain"
