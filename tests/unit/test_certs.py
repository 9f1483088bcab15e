"""vigil certs: a CA, server certificates with their hosts, client
certificates without a common name (etcd's gateway refuses one with auth on)."""

import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from vigil.certs import init_ca, issue
from vigil.errors import ConfigError


def test_ca_server_and_client_certificates(tmp_path):
    ca = init_ca(tmp_path)
    with pytest.raises(ConfigError, match="already holds a CA"):
        init_ca(tmp_path)
    server, skey = issue(tmp_path, "etcd", ["127.0.0.1", "etcd.example"])
    client, ckey = issue(tmp_path, "router")
    s = x509.load_pem_x509_certificate(server.read_bytes())
    c = x509.load_pem_x509_certificate(client.read_bytes())
    assert s.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd"
    sans = s.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(x) for x in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["etcd.example"]
    assert not c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "router"
    assert oct(skey.stat().st_mode & 0o777) == "0o600" and oct(ckey.stat().st_mode & 0o777) == "0o600"
    ctx = ssl.create_default_context(cafile=str(ca))  # the chain loads and verifies as a context
    ctx.load_cert_chain(str(client), str(ckey))


def test_issue_needs_a_ca(tmp_path):
    with pytest.raises(ConfigError, match="vigil certs init"):
        issue(tmp_path, "n1")
