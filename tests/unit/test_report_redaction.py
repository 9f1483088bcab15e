"""`vigil report`'s redaction (vigil.diagnose.report) with secrets planted
where they really end up: a relative password file with a quote in it (and
that password JSON-escaped in an event), a tokens file of plain letters, a
signing key file beside a node name that must survive, an inline key, a
misspelled secret field, a nested one, an API key on the model server's
command line, a URL's password, a PEM key cut short in a log. The bundle
written to disk holds none of them; a secret file it could not read is
named; a configuration that is not YAML is named by line, never quoted."""

from __future__ import annotations

import json
import tarfile

import pytest
import yaml

from vigil.diagnose.report import Bundle, Redactor, config_text, write
from vigil.errors import VigilError

PASSWORD = 'bmc"pass\\word9'
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEF"  # letters only: a token load_tokens accepts
HEXKEY = "3f96e340229143b956dcdfdce07ca1e4ad9f75de4fde52ad224803acbd37b339"
INLINE = "inlineheartbeatkey0123456789"
TYPO = "misspelledsecretvalue"
NESTED = "nestedsecretvalue42"
APIKEY = "sk-live-0123456789abcdef"
URLPASS = "urlpassword77"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"


def test_every_planted_secret_is_gone_from_the_bundle_and_the_rest_stays(tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "bmc.pass").write_text(PASSWORD + "\n")
    (conf / "tokens.yaml").write_text(f"operator: {TOKEN}\n")
    (conf / "gpu-node-0007.key").write_text(f"# gpu-node-0007's signing keys\nkeys:\n  1: {HEXKEY}\n"
                                            "node: gpu-node-0007\nsend: 1\n")
    (conf / "agent.yaml").write_text(yaml.safe_dump({
        "node": "gpu-node-0007",
        "heartbeat": {"signing_key_file": "gpu-node-0007.key", "keyring_file": "cluster.keyring", "key": INLINE},
        "api": {"tokens_file": "tokens.yaml"},
        "fencing": {"topology": {"n2": [{"type": "ipmi", "host": "10.0.0.2", "password_file": "bmc.pass"}]}},
        "pasword": TYPO, "api_key": {"primary": NESTED},
        "inference": {"command": ["vllm", "serve", "--api-key", APIKEY], "url": f"http://admin:{URLPASS}@127.0.0.1:8000"},
        "etcd": {"password_file": "gone.pass"}}))
    redactor, bundle = Redactor(), Bundle()
    bundle.add("config/gpu-node-0007.yaml", config_text(str(conf / "agent.yaml"), redactor))
    bundle.add("logs/gpu-node-0007.log", f"2026 gpu-node-0007 INFO token {TOKEN} key {HEXKEY}\n"
                                         f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n")
    bundle.add_json("events.json", [{"kind": "x", "node": "gpu-node-0007", "cause": f"login with {PASSWORD}"},
                                    {"kind": "y", "cause": f"serving on http://admin:{URLPASS}@127.0.0.1:8000"}])
    out = tmp_path / "bundle.tar.gz"
    write(bundle, redactor, out, "bundle")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    everything = "\n".join(files.values())
    for secret in (PASSWORD, json.dumps(PASSWORD)[1:-1], TOKEN, HEXKEY, INLINE, TYPO, NESTED, APIKEY, URLPASS,
                   PEM_BODY):
        assert secret not in everything, secret
    assert everything.count("gpu-node-0007") >= 4, "a node name is not a secret, even in a key file"
    config = yaml.safe_load(files["bundle/config/gpu-node-0007.yaml"])
    assert config["heartbeat"]["signing_key_file"] == "gpu-node-0007.key", "paths stay"
    assert config["inference"]["command"][:3] == ["vllm", "serve", "--api-key"]
    assert "gone.pass: No such file" in files["bundle/MANIFEST.txt"], "a secret file not read is named"
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")] == [], "no temporary file left"


def test_a_configuration_that_is_not_yaml_is_named_by_line_not_quoted(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("node: n1\npassword: hunter2: [unclosed\n")
    with pytest.raises(VigilError) as e:
        config_text(str(bad), Redactor())
    assert "line 2" in str(e.value) and "hunter2" not in str(e.value)
