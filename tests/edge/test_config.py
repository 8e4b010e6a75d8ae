"""Config: hostile input gets a clear error naming the field; nothing half-applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import Config, ConfigError, load_config, merge_fragment, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_an_empty_file_gives_the_safe_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg == Config()
    assert cfg.policy.hold_max_s <= 600


def test_the_shipped_default_config_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "default.yaml")
    assert cfg.actuators.relay_pin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("polcy: {}\n", "polcy: Extra inputs are not permitted"),
        ("policy:\n  hold_max_s: 9999\n", "policy.hold_max_s: Input should be less than or equal to 600"),
        ("policy:\n  confirm_frames: 6\n  confirm_window: 5\n", "confirm_frames must not exceed confirm_window"),
        ("policy:\n  block_classes: [ebike, wheelchair]\n", "both blocked and a veto"),
        ("camera:\n  fps: fast\n", "camera.fps: Input should be a valid number"),
        ("actuators:\n  fire_pin: GPIO17\n", "pins must be distinct"),
        ("mqtt:\n  url: http://x\n", "url must start with mqtt:// or mqtts://"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("unit: {id: 'bad/id'}\n", "unit.id"),
        ("x: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, text))


def test_a_yaml_alias_bomb_is_refused_without_expanding(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    with pytest.raises(ConfigError, match="aliases are not allowed"):
        load_config(write(tmp_path, bomb))


def test_a_1_mb_file_is_refused_before_parsing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="limit"):
        load_config(write(tmp_path, "# " + "x" * 1_000_000 + "\n"))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_a_bad_fragment_leaves_the_running_config_untouched() -> None:
    cfg = parse_config({"policy": {"hold_max_s": 60}})
    with pytest.raises(ConfigError, match=r"policy\.hold_max_s"):
        merge_fragment(cfg, {"policy": {"hold_max_s": -1}})
    assert cfg.policy.hold_max_s == 60
    assert merge_fragment(cfg, {"policy": {"cooldown_s": 5}}).policy.hold_max_s == 60


def test_the_json_schema_documents_every_field() -> None:
    schema = Config.model_json_schema()
    policy = schema["$defs"]["PolicyConfig"]["properties"]
    assert policy["hold_max_s"]["maximum"] == 600
    assert "description" in policy["hold_max_s"]
