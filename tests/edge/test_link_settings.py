"""Link settings from the device config: URL, TLS files, and secrets read from files, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import ConfigError
from edge.config import parse_config
from edge.report.link_settings import LinkSettings


def cfg(**mqtt: object) -> LinkSettings:
    return LinkSettings.from_config(parse_config({"unit": {"id": "unit-7"}, "mqtt": mqtt}))


def test_mqtts_defaults_to_8883_and_the_unit_id_as_username() -> None:
    s = cfg(url="mqtts://broker.example.net")
    assert (s.host, s.port, s.tls, s.username) == ("broker.example.net", 8883, True, "unit-7")


def test_a_relative_password_file_resolves_in_the_systemd_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = cfg(url="mqtt://127.0.0.1:1884", password_file="mqtt-password", ca_file="ca.crt")
    assert s.password == "s3cret"
    assert s.ca_file == str(tmp_path / "ca.crt")
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(("mqtt", "message"), [
    ({"url": ""}, "empty"),
    ({"url": "mqtt://user:pw@host"}, "credentials belong in mqtt.password_file"),
    ({"url": "mqtt://host:99999"}, "invalid port"),
    ({"url": "mqtt://host", "password_file": "/nonexistent/pw"}, "cannot read"),
])
def test_bad_settings_name_the_field(mqtt: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(**mqtt)


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    s = cfg(url="mqtts://host", ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="mqtt TLS files"):
        s.ssl_context()
