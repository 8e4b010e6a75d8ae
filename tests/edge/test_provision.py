"""`liftguard provision`: answers in, a validated config + reference frame + systemd unit out."""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edge.config import load_config
from edge.install.provision import UNIT_NAME, draw_roi, grab_frame, provision_main
from edge.install.questions import parse_roi
from edge.install.unit import unit_directives

ANSWERS = {
    "unit_id": "hk-kwt-a-lift1",
    "site": "Kwai Tsing Estate",
    "building": "Block A",
    "elevator": "Lift 1",
    "roi": "0.2,0.1 0.8,0.1 0.8,0.95 0.2,0.95",
    "backend": "gpio",
    "relay_pin": "GPIO17",
    "relay_active": "low",
    "fire_pin": "GPIO27",
    "fire_active": "low",
    "door_pin": "GPIO22",
    "voice": "alsa",
    "broker_url": "none",
}


def scene(w: int = 320, h: int = 240) -> np.ndarray:
    """A textured test view: gradient + blocks, so frames and PNGs are deterministic."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, :, 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    cv2.rectangle(img, (40, 30), (120, 200), (0, 0, 255), -1)
    cv2.circle(img, (230, 120), 40, (255, 255, 255), -1)
    return img


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(3):
        writer.write(scene())
    writer.release()
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def answers_file(tmp_path: Path, video: Path) -> Path:
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({**ANSWERS, "camera_source": str(video)}))
    return path


def run(root: Path, *args: str, ask: Iterator[str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    replies = ask or iter(())
    code = provision_main(["--root", str(root), *args], ask=lambda prompt: next(replies),
                          ask_secret=lambda prompt: next(replies), out=out)
    return code, out.getvalue()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_non_interactive_writes_a_config_that_loads_and_a_unit_that_points_at_it(
        root: Path, answers_file: Path) -> None:
    code, out = run(root, "--answers", str(answers_file))
    assert code == 0, out
    config = load_config(root / "etc/liftguard/config.yaml")
    assert config.unit.id == "hk-kwt-a-lift1" and config.unit.elevator == "Lift 1"
    assert config.actuators.relay_active_high is False
    assert config.actuators.fire_pin == "GPIO27" and config.actuators.fire_active_high is False
    assert config.policy.roi == ((0.2, 0.1), (0.8, 0.1), (0.8, 0.95), (0.2, 0.95))
    assert config.mqtt.url == ""
    unit = (root / "etc/systemd/system" / UNIT_NAME).read_text()
    assert ("Service", "ExecStart", "/opt/liftguard/.venv/bin/liftguard run --config /etc/liftguard/config.yaml") \
        in unit_directives(unit)
    assert not [d for d in unit_directives(unit) if d[1] == "LoadCredential"], "no credentials, none loaded"
    assert stat.S_IMODE((root / "etc/liftguard/config.yaml").stat().st_mode) == 0o644


def test_reference_frame_and_roi_preview_are_saved_as_png(root: Path, answers_file: Path) -> None:
    run(root, "--answers", str(answers_file))
    reference = cv2.imread(str(root / "etc/liftguard/reference.png"))
    preview = cv2.imread(str(root / "etc/liftguard/roi.png"))
    assert reference.shape == (240, 320, 3)
    assert np.abs(reference.astype(int) - scene().astype(int)).mean() < 5  # MJPG is lossy
    outside, inside = preview[5, 5], preview[120, 160]
    assert outside.sum() < reference[5, 5].sum() / 2, "outside the door region is dimmed"
    assert (inside == reference[120, 160]).all(), "inside the region is untouched"


def test_second_run_with_the_same_answers_changes_nothing(root: Path, answers_file: Path) -> None:
    assert run(root, "--answers", str(answers_file))[0] == 0
    before = snapshot(root)
    code, out = run(root, "--answers", str(answers_file))
    assert code == 0
    assert out.strip().endswith("no changes")
    assert snapshot(root) == before


def test_dry_run_shows_a_unified_diff_and_writes_nothing(root: Path, answers_file: Path) -> None:
    run(root, "--answers", str(answers_file))
    before = snapshot(root)
    code, out = run(root, "--answers", str(answers_file), "--elevator", "Lift 2", "--dry-run")
    assert code == 0
    assert "-  elevator: Lift 1\n+  elevator: Lift 2\n" in out
    assert "dry run: 1 file(s) would change" in out
    assert snapshot(root) == before


def test_dry_run_on_a_fresh_box_lists_every_file(root: Path, answers_file: Path) -> None:
    code, out = run(root, "--answers", str(answers_file), "--dry-run")
    assert code == 0
    assert "+++ " + str(root / "etc/liftguard/config.yaml") in out
    assert "(binary, " in out  # the PNGs
    assert not root.exists()


def test_interactive_prompts_validate_each_answer_and_ask_again(root: Path, video: Path) -> None:
    replies = iter([
        "bad id!", "hk-kwt-b-lift3",  # invalid unit id is refused, then a good one
        "Kwai Tsing Estate", "Block B", "Lift 3",
        str(video),
        "0.1,0.1 0.9,0.1", "none",  # two points is not a region; none = whole frame
        "gpio",
        "GPIO17", "sideways", "high",
        "GPIO17", "GPIO27",  # the fire input cannot share the relay pin
        "low",
        "",  # door pin: keep the default (none)
        "none",  # voice
        "mqtts://broker.example:8883",
        "",  # username = unit id
        "s3cret",  # password (secret prompt)
        "none",  # no client certificate
        "y",  # write?
    ])
    code, out = run(root, ask=replies)
    assert code == 0, out
    assert "unit_id: 1-64 characters" in out
    assert "roi: at least 3 points" in out
    assert "relay_active: answer high or low" in out
    assert "pins must be distinct" in out
    config = load_config(root / "etc/liftguard/config.yaml")
    assert config.unit.id == "hk-kwt-b-lift3"
    assert config.policy.roi is None
    assert (config.actuators.fire_pin, config.actuators.voice.mode) == ("GPIO27", "none")
    assert config.mqtt.password_file == "mqtt-password"
    secret = root / "etc/liftguard/credentials/mqtt-password"
    assert secret.read_text() == "s3cret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "s3cret" not in out and "s3cret" not in (root / "etc/liftguard/config.yaml").read_text()


def test_interactive_defaults_come_from_the_existing_config(root: Path, answers_file: Path) -> None:
    run(root, "--answers", str(answers_file), "--no-probe")
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return ""  # accept every default

    code = provision_main(["--root", str(root), "--no-probe"], ask=ask, ask_secret=ask, out=io.StringIO())
    assert code == 0
    assert "Unit id (also the MQTT user / certificate name) [hk-kwt-a-lift1]: " in prompts
    assert "Relay board triggers on high or low [low]: " in prompts


def test_unit_id_is_required_when_nothing_is_installed_yet(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert provision_main(["--root", str(root), "-y", "--no-probe"], out=io.StringIO()) == 2
    assert "unit_id is required" in capsys.readouterr().err


def test_a_bad_answer_in_the_file_names_the_question(root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({**ANSWERS, "broker_url": "http://wrong"}))
    assert provision_main(["--root", str(root), "--answers", str(path), "--no-probe"], out=io.StringIO()) == 2
    assert "broker_url: mqtt://host:1883 or mqtts://host:8883" in capsys.readouterr().err
    assert not root.exists()


def test_camera_that_gives_no_frame_fails_unless_no_probe(root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--root", str(root), "-y", *[f"--{k.replace('_', '-')}={v}" for k, v in ANSWERS.items()],
            "--camera-source", str(tmp_path / "missing.avi")]
    assert provision_main(args, out=io.StringIO()) == 2
    assert "delivered no frame" in capsys.readouterr().err
    assert provision_main([*args, "--no-probe"], out=io.StringIO()) == 0
    assert not (root / "etc/liftguard/reference.png").exists()


def test_certificate_issued_by_liftguard_fleet_goes_into_credentials(root: Path, tmp_path: Path,
                                                                       answers_file: Path) -> None:
    fleet = tmp_path / "fake-fleet"
    calls = tmp_path / "calls.txt"
    fleet.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
# liftguard-fleet ca issue --unit ID --out DIR
printf 'CA' > "$6/ca.crt"; printf 'CERT' > "$6/$4.crt"; printf 'KEY' > "$6/$4.key"
""")
    fleet.chmod(0o755)
    args = ["--answers", str(answers_file), "--fleet-cmd", str(fleet), "--broker-url", "mqtts://fleet.example:8883",
            "--tls", "issue"]
    assert run(root, *args)[0] == 0
    creds = root / "etc/liftguard/credentials"
    assert {p.name: p.read_text() for p in creds.iterdir()} == {"ca.crt": "CA", "unit.crt": "CERT", "unit.key": "KEY"}
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert stat.S_IMODE((creds / "unit.key").stat().st_mode) == 0o600
    config = load_config(root / "etc/liftguard/config.yaml")
    assert (config.mqtt.ca_file, config.mqtt.cert_file, config.mqtt.key_file) == ("ca.crt", "unit.crt", "unit.key")
    unit = unit_directives((root / "etc/systemd/system" / UNIT_NAME).read_text())
    assert [v for _, k, v in unit if k == "LoadCredential"] == [
        "ca.crt:/etc/liftguard/credentials/ca.crt",
        "unit.crt:/etc/liftguard/credentials/unit.crt",
        "unit.key:/etc/liftguard/credentials/unit.key",
    ]
    # Re-running keeps the issued certificate instead of issuing another one.
    code, out = run(root, *args)
    assert (code, out.strip().splitlines()[-1]) == (0, "no changes")
    assert calls.read_text().splitlines() == ["ca issue --unit hk-kwt-a-lift1 --out " +
                                              calls.read_text().split("--out ")[1].splitlines()[0]]


def test_given_certificate_files_are_copied(root: Path, tmp_path: Path, answers_file: Path) -> None:
    for name in ("my-ca.pem", "my.crt", "my.key"):
        (tmp_path / name).write_text(name)
    code, _ = run(root, "--answers", str(answers_file), "--broker-url", "mqtts://fleet.example:8883",
                  "--tls", "files", "--ca-file", str(tmp_path / "my-ca.pem"), "--cert-file",
                  str(tmp_path / "my.crt"), "--key-file", str(tmp_path / "my.key"))
    assert code == 0
    creds = root / "etc/liftguard/credentials"
    assert (creds / "unit.key").read_text() == "my.key" and (creds / "ca.crt").read_text() == "my-ca.pem"


def test_config_path_and_unit_dir_are_configurable(root: Path, answers_file: Path) -> None:
    code, _ = run(root, "--answers", str(answers_file), "--config-path", "/srv/lg/unit.yaml",
                  "--unit-dir", "/usr/lib/systemd/system", "--exec-path", "/usr/bin/liftguard")
    assert code == 0
    assert load_config(root / "srv/lg/unit.yaml").unit.id == "hk-kwt-a-lift1"
    unit = (root / "usr/lib/systemd/system" / UNIT_NAME).read_text()
    assert "ExecStart=/usr/bin/liftguard run --config /srv/lg/unit.yaml\n" in unit


@pytest.mark.parametrize(("text", "expected"), [
    ("0.1,0.2 0.9,0.2 0.5,0.8", [(0.1, 0.2), (0.9, 0.2), (0.5, 0.8)]),
    ("none", None),
    ([[0, 0], [1, 0], [1, 1]], [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]),
])
def test_parse_roi_accepts_points_text_or_lists(text: object, expected: object) -> None:
    assert parse_roi(text) == expected


@pytest.mark.parametrize("text", ["0.1,0.2 0.9,0.2", "0,0 1,0 1,1.5", "a,b c,d e,f", "0.1 0.2 0.3"])
def test_parse_roi_refuses_bad_regions(text: str) -> None:
    with pytest.raises(ValueError):
        parse_roi(text)


def test_grab_frame_reads_the_first_image_of_a_folder(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((10, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((10, 10, 3), 200, np.uint8))
    frame = grab_frame(str(tmp_path))
    assert frame is not None and int(frame[0, 0, 0]) == 200
    assert grab_frame(str(tmp_path / "nothing-here.mp4")) is None


def test_draw_roi_whole_frame_marks_the_border() -> None:
    out = draw_roi(scene(), None)
    assert tuple(out[2, 100]) == (0, 255, 0)


def test_grab_frame_opens_the_camera_the_way_the_service_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.see.capture as capture
    from edge.config import CameraConfig

    opened: list[CameraConfig] = []

    class LiveReader:  # a camera whose exposure settles: frame n has level 10 * n
        ended, live = False, True

        def __init__(self) -> None:
            self.n = 0

        def read(self) -> np.ndarray:
            self.n += 1
            return np.full((8, 8, 3), 10 * self.n, np.uint8)

        def close(self) -> None:
            pass

    def open_source(cfg: CameraConfig) -> LiveReader:
        opened.append(cfg)
        return LiveReader()

    monkeypatch.setattr(capture, "open_source", open_source)
    frame = grab_frame("/dev/video2", timeout_s=3.0, warmup_frames=5)
    assert [(c.source, c.open_timeout_s, c.read_timeout_s) for c in opened] == [("/dev/video2", 3.0, 3.0)]
    assert frame is not None and int(frame[0, 0, 0]) == 60  # five warm-up frames skipped
