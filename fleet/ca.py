"""A small certificate authority for provisioning: one CA, one key + certificate per unit.

The certificate's CN is the unit id because the broker maps it to the MQTT username
(`use_identity_as_username`), and the ACL confines that username to `liftguard/v1/units/%u/#`.
Interface used by `liftguard provision`:  liftguard-fleet ca issue --unit ID --out DIR
which writes DIR/{unit.key, unit.crt, ca.crt}.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.mqtt import UNIT_ID_PATTERN
from fleet.errors import CertificateError

CA_KEY, CA_CERT = "ca.key", "ca.crt"
UNIT_KEY, UNIT_CERT = "unit.key", "unit.crt"
_UNIT_ID_RE = re.compile(UNIT_ID_PATTERN)


@dataclass(frozen=True)
class IssuedFiles:
    key: Path
    cert: Path
    ca_cert: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create with 0600 from the start: a key must never exist world-readable, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: small, fast on Pi-class CPUs, accepted by every TLS stack Mosquitto/EMQX use.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(ca_dir: Path, name: str = "LiftGuard fleet CA", days: int = 3650, force: bool = False) -> Path:
    """Create ca.key + ca.crt in ca_dir; refuses to overwrite an existing CA unless force."""
    if (ca_dir / CA_KEY).exists() and not force:
        raise CertificateError(f"a CA already exists in {ca_dir} (use --force to replace it)")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LiftGuard")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(ca_dir / CA_KEY, _key_pem(key))
    (ca_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_dir / CA_CERT


def load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"no CA in {ca_dir}: run `liftguard-fleet ca init --ca-dir {ca_dir}`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    return key, cert


# Broker usernames with rights beyond one unit's subtree (config/mosquitto/acl): a unit certificate with one
# of these CNs would read and command the whole fleet. Compared case-insensitively.
RESERVED_NAMES = frozenset({"fleet", "homeassistant", "admin", "root", "mosquitto", "broker", "server"})
_RESERVED_RE = re.compile(r"^fleet[-_.].*$", re.IGNORECASE)  # fleet-2, fleet.b, ...: fleet servers


def reserved_reason(unit_id: str) -> str | None:
    """Why `unit_id` may not be a unit's certificate name; None when it may."""
    if unit_id.lower() in RESERVED_NAMES:
        return f"{unit_id!r} is reserved for a service account with fleet-wide broker rights"
    if _RESERVED_RE.match(unit_id):
        return f"{unit_id!r} is reserved: names starting with 'fleet' belong to fleet servers"
    return None


def issue_unit(ca_dir: Path, unit_id: str, out_dir: Path, days: int = 825) -> IssuedFiles:
    """Issue a client certificate with CN = unit_id into out_dir (unit.key, unit.crt, ca.crt)."""
    if not _UNIT_ID_RE.match(unit_id):
        raise CertificateError(f"invalid unit id {unit_id!r} (letters, digits, _ . -; 1-64 characters)")
    reason = reserved_reason(unit_id)
    if reason:
        raise CertificateError(f"refusing a unit certificate: {reason}")
    ca_key, ca_cert = load_ca(ca_dir)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LiftGuard units")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = IssuedFiles(out_dir / UNIT_KEY, out_dir / UNIT_CERT, out_dir / CA_CERT)
    _write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files
