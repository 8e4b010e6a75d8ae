"""Fleet server settings: what an installer may write, and what they are told when it is wrong."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from contract.errors import ConfigError
from fleet.config import load_settings


@pytest.mark.parametrize(("name", "tz"), [
    (None, dt.UTC),  # unset: days are UTC days, as before the setting existed
    ("UTC", dt.UTC),
    ("Asia/Shanghai", ZoneInfo("Asia/Shanghai")),
    ("Europe/Berlin", ZoneInfo("Europe/Berlin")),
])
def test_the_site_time_zone_is_an_iana_name(name: str | None, tz: dt.tzinfo) -> None:
    settings = load_settings({"timezone": name}, environ={})
    assert settings.tz == tz and settings.timezone == (name or "UTC")


def test_an_unknown_time_zone_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"LIFTGUARD_FLEET_TIMEZONE": "Mars/Olympus"})
    assert str(caught.value) == ("fleet setting timezone (LIFTGUARD_FLEET_TIMEZONE): unknown time zone "
                                 "'Mars/Olympus' (an IANA name such as 'Asia/Shanghai' or 'UTC')")


@pytest.mark.parametrize(("name", "told"), [
    ("asia/shanghai", "did you mean 'Asia/Shanghai'?"),
    ("Asia/Shanghai ", "did you mean 'Asia/Shanghai'?"),
    ("Asia/Shanghi", "did you mean 'Asia/Shanghai'?"),
    ("CST", "unknown time zone 'CST'"),  # an abbreviation names no zone: China? Cuba? US Central?
    ("", "unknown time zone ''"),
    ("../etc/passwd", "unknown time zone '../etc/passwd'"),
    ("Asia", "unknown time zone 'Asia'"),  # a folder of the zone database, not a zone
])
def test_near_misses_are_refused_too_with_a_suggestion_where_one_is_close(name: str, told: str) -> None:
    with pytest.raises(ConfigError, match=r"^fleet setting timezone \(LIFTGUARD_FLEET_TIMEZONE\): ") as caught:
        load_settings({"timezone": name}, environ={})
    assert told in str(caught.value)
