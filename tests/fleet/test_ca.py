"""Provisioning certificates: `liftguard-fleet ca issue --unit ID --out DIR` (used by `liftguard provision`)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.ca import init_ca, issue_unit
from fleet.cli import main
from fleet.errors import CertificateError


def test_issue_creates_the_ca_on_first_use_and_a_unit_cert_with_cn_equal_to_the_unit_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "provision"
    assert main(["ca", "issue", "--ca-dir", str(tmp_path / "ca"), "--unit", "lift-0042", "--out", str(out)]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths == {"key": str(out / "unit.key"), "cert": str(out / "unit.crt"), "ca_cert": str(out / "ca.crt")}

    cert = x509.load_pem_x509_certificate((out / "unit.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lift-0042"
    assert cert.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))  # raises if forged
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (out / "unit.key", tmp_path / "ca" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_every_unit_gets_its_own_key_from_the_same_ca(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    a = issue_unit(tmp_path / "ca", "lift-a", tmp_path / "a")
    b = issue_unit(tmp_path / "ca", "lift-b", tmp_path / "b")
    assert a.key.read_bytes() != b.key.read_bytes()
    assert a.ca_cert.read_bytes() == b.ca_cert.read_bytes()


@pytest.mark.parametrize("unit_id", ["../etc", "a/b", "", "x" * 65, "lift+1"])
def test_unit_ids_that_could_escape_the_acl_are_refused(tmp_path: Path, unit_id: str) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(CertificateError, match="invalid unit id"):
        issue_unit(tmp_path / "ca", unit_id, tmp_path / "out")


def test_an_existing_ca_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(CertificateError, match="already exists"):
        init_ca(tmp_path / "ca")
    assert main(["ca", "init", "--ca-dir", str(tmp_path / "ca")]) == 2


@pytest.mark.parametrize("name", ["fleet", "FLEET", "homeassistant", "HomeAssistant", "fleet-2", "fleet.b", "admin"])
def test_issue_refuses_reserved_names_that_carry_fleet_wide_rights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    out = tmp_path / "provision"
    assert main(["ca", "issue", "--ca-dir", str(tmp_path / "ca"), "--unit", name, "--out", str(out)]) == 2
    assert f"refusing a unit certificate: {name!r} is reserved" in capsys.readouterr().err
    assert not (out / "unit.crt").exists() and not (out / "unit.key").exists()


@pytest.mark.parametrize("name", ["fleetwood-7", "lift-fleet", "home-assistant-lobby"])
def test_names_that_merely_contain_a_reserved_word_are_fine(tmp_path: Path, name: str) -> None:
    init_ca(tmp_path / "ca")
    assert issue_unit(tmp_path / "ca", name, tmp_path / "out").cert.exists()
