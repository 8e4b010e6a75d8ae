"""The shipped fleet broker (config/mosquitto/) under test, with a throwaway PKI: a fleet CA, a server
certificate, unit certificates (CN = unit id), plus the ones the broker must refuse: signed by another CA,
or expired. EC keys: fast to make.

The `pki` (one per test module) and `broker` (one per test) fixtures, re-exported by tests/conftest.py, serve
the tests of the device's link (tests/edge/test_link_acl.py) and of the fleet's identity binding
(tests/fleet/test_broker_identity.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.mosquitto import REPO, MosquittoBroker, ratelimit_plugin

SHIPPED = REPO / "config" / "mosquitto"
NOW = dt.datetime.now(dt.UTC)


class Authority:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = folder / f"{name}.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False, expired: bool = False) -> tuple[Path, Path]:
        """(certificate path, key path) for `cn`."""
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)) if expired else \
            (NOW - dt.timedelta(minutes=5), NOW + dt.timedelta(days=30))
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{cn}{'-expired' if expired else ''}-by-{self.cert_path.stem}"
        stem.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        stem.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return stem.with_suffix(".crt"), stem.with_suffix(".key")


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fleet_ca = Authority(folder, "ca")
        self.rogue_ca = Authority(folder, "rogue")
        server_crt, server_key = self.fleet_ca.issue("broker", server=True)
        shutil.copy(server_crt, folder / "server.crt")
        shutil.copy(server_key, folder / "server.key")
        shutil.copy(SHIPPED / "acl", folder / "acl")

    def context(self, cn: str, *, ca: Authority | None = None, expired: bool = False) -> ssl.SSLContext:
        cert, key = (ca or self.fleet_ca).issue(cn, expired=expired)
        ctx = ssl.create_default_context(cafile=self.fleet_ca.cert_path)
        ctx.load_cert_chain(cert, key)
        return ctx


class ShippedConfigBroker(MosquittoBroker):
    """Runs config/mosquitto/mosquitto.conf as shipped, with only paths and port pointed at the test."""

    def __init__(self, workdir: Path, certs: Path) -> None:
        super().__init__(workdir)
        self.certs = certs

    def write_config(self) -> Path:
        text = (SHIPPED / "mosquitto.conf").read_text()
        plugin = ratelimit_plugin()
        for old, new in {"/etc/mosquitto/liftguard/": f"{self.certs}/", "/var/lib/mosquitto/": f"{self.workdir}/",
                         "/usr/lib/mosquitto-liftguard/": f"{plugin.parent}/",
                         "log_dest syslog": f"log_dest file {self.log_path}",
                         "listener 8883": f"listener {self.port} 127.0.0.1"}.items():
            assert old in text, f"the shipped config no longer contains {old!r}"
            text = text.replace(old, new)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("user root\n" + text)  # tests may run as root: do not drop to `mosquitto`
        return conf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = ShippedConfigBroker(tmp_path / "broker", pki.folder).start()
    yield b
    b.stop()
