"""A small certificate authority for a Vigil cluster (`vigil certs`): one CA,
and certificates for etcd members, agents, routers, gateways and operators.

A certificate is issued for a name (n1, router, operator, etcd). A server
certificate (one given hosts) has CN=name and the hosts as subject
alternative names; a client-only certificate names its holder in OU and has
no CN, because etcd's JSON gateway refuses any client certificate with a CN
once auth is on: the etcd user (vigil.store.etcd_auth) is the identity, the
certificate proves the client belongs to the cluster. Keys are
ECDSA P-256, written 0600; certificates are valid for `days` (default 825,
the CA/Browser Forum's former limit); nothing here is ever committed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vigil.errors import ConfigError
from vigil.files import write_atomic


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path, name: str = "Vigil cluster CA", days: int = 3650) -> Path:
    """Create DIR/ca.pem and DIR/ca.key; refuses to overwrite an existing CA."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.key").exists():
        raise ConfigError("--dir", str(directory), "already holds a CA (ca.key): issue from it, or "
                                                   "choose another directory")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_atomic(directory / "ca.key", _key_pem(key), 0o600)
    write_atomic(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return directory / "ca.pem"


def issue(directory: Path, name: str, hosts: list[str] = (), days: int = 825) -> tuple[Path, Path]:
    """DIR/NAME.pem and DIR/NAME.key, signed by DIR's CA: a client
    certificate, and with `hosts` (IP addresses or DNS names) a server one too."""
    try:
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError("--dir", str(directory), f"holds no usable CA ({e}): `vigil certs init "
                                                   f"--dir {directory}` first") from None
    if not name or "/" in name:
        raise ConfigError("--name", name, "a plain name such as n1, router or operator")
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vigil"),
                                  x509.NameAttribute(NameOID.COMMON_NAME if hosts
                                                     else NameOID.ORGANIZATIONAL_UNIT_NAME, name)]))
         .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    write_atomic(directory / f"{name}.key", _key_pem(key), 0o600)
    write_atomic(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return directory / f"{name}.pem", directory / f"{name}.key"
