"""edge/install/liftguard.service (packaged): the directives the safety case relies on, and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.install.provision import DEFAULT_TEMPLATE
from edge.install.unit import render_unit, unit_directives

UNIT = DEFAULT_TEMPLATE
SHIPPED_EXEC = "/opt/liftguard/.venv/bin/liftguard"


def directives() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for section, key, value in unit_directives(UNIT.read_text()):
        found.setdefault((section, key), []).append(value)
    return found


@pytest.mark.parametrize(("section", "key", "value"), [
    ("Service", "Type", "notify"),
    ("Service", "Restart", "always"),
    ("Unit", "StartLimitIntervalSec", "0"),
    ("Service", "ExecStart", f"{SHIPPED_EXEC} run --config /etc/liftguard/config.yaml"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "StateDirectory", "liftguard"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "DevicePolicy", "closed"),
    ("Service", "SupplementaryGroups", "gpio video dialout audio"),
    # issue 15 item 9: lgpio needs a writable working directory under ProtectSystem=strict
    ("Service", "WorkingDirectory", "%S/liftguard"),
    ("Service", "ProtectProc", "invisible"),
    ("Service", "ProcSubset", "pid"),
    ("Service", "UMask", "0077"),
])
def test_unit_has_the_directive(section: str, key: str, value: str) -> None:
    assert directives()[(section, key)] == [value]


def test_watchdog_is_set_and_only_the_needed_devices_are_allowed() -> None:
    found = directives()
    assert 5 <= int(found[("Service", "WatchdogSec")][0]) <= 30
    assert found[("Service", "DeviceAllow")] == [
        "char-gpiochip rw", "char-video4linux rw", "char-ttyACM rw", "char-alsa rw"]
    assert all(v.split(":")[1].startswith("/etc/liftguard/credentials/")
               for v in found[("Service", "LoadCredential")])


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on a copy whose ExecStart binary exists (a fake one in tmp_path)."""
    fake = tmp_path / "bin" / "liftguard"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "liftguard.service"
    unit.write_text(unit_text.replace(SHIPPED_EXEC, str(fake)))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


@needs_systemd_analyze
def test_shipped_unit_passes_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", "systemd ignored a line: " + result.stderr


@needs_systemd_analyze
def test_unit_as_rewritten_by_provision_also_verifies(tmp_path: Path) -> None:
    text = render_unit(UNIT.read_text(), "/srv/liftguard/config.yaml", ["ca.crt", "mqtt-password"],
                       "/srv/liftguard/credentials")
    assert "ExecStart=/opt/liftguard/.venv/bin/liftguard run --config /srv/liftguard/config.yaml\n" in text
    result = _verify(text, tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above is meaningful: a misspelt directive does show up on stderr."""
    result = _verify(UNIT.read_text().replace("WatchdogSec=", "WatchDogSec="), tmp_path)
    assert "Unknown key" in result.stderr


def exposure(unit_text: str, tmp_path: Path) -> float:
    """`systemd-analyze security --offline=yes`'s overall exposure (0 = locked down, 10 = exposed)."""
    fake = tmp_path / "bin" / "liftguard"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "liftguard.service"
    unit.write_text(unit_text.replace(SHIPPED_EXEC, str(fake)))
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-1000:] + result.stderr[-1000:]
    return float(match.group(1))


@needs_systemd_analyze
def test_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    """Issue 15 item 9: from 3.4 to <= 2.0 (seccomp filter, /proc hidden, private mounts/IPC, umask)."""
    assert exposure(UNIT.read_text(), tmp_path) <= 2.0


@needs_systemd_analyze
def test_the_exposure_check_would_notice_a_weaker_unit(tmp_path: Path) -> None:
    weaker = "\n".join(line for line in UNIT.read_text().splitlines()
                       if not line.startswith(("SystemCallFilter=", "ProtectProc=", "ProcSubset=")))
    assert exposure(weaker, tmp_path) > 2.0


def test_the_unit_template_is_package_data_not_a_checkout_path() -> None:
    from importlib import resources

    packaged = resources.files("edge.install").joinpath("liftguard.service")
    assert packaged.is_file() and DEFAULT_TEMPLATE.read_text() == packaged.read_text()
    assert "ExecStart=" in DEFAULT_TEMPLATE.read_text()
