"""Item 6 of issue 16: wrong passwords slow down that user from that address with growing waits, never a
lockout; X-Forwarded-For counts only from configured proxies; an absurdly long search is a clear 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.errors import ConfigError
from fleet.auth import LoginThrottle
from fleet.config import load_settings
from tests.fleet.conftest import PASSWORD, RunningFleet, start_fleet
from tests.support.mosquitto import MosquittoBroker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_grow_after_the_free_failures_and_never_become_a_lockout() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free_failures=3, base_delay_s=1, max_delay_s=8, forget_after_s=900, clock=clock)
    waits = []
    for _ in range(8):
        throttle.failed("10.0.0.5", "admin")
        waits.append(throttle.retry_after("10.0.0.5", "admin"))
        clock.now += waits[-1]  # the attacker waits exactly as long as told
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]
    assert throttle.retry_after("10.0.0.5", "admin") == 0  # the wait passed: a try is allowed again
    assert throttle.retry_after("10.0.0.9", "admin") == 0  # the same user elsewhere: untouched
    assert throttle.retry_after("10.0.0.5", "ana") == 0  # another user at that address: untouched


def test_success_or_a_quiet_spell_forgets_the_failures() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free_failures=1, base_delay_s=1, max_delay_s=60, forget_after_s=60, clock=clock)
    for _ in range(4):
        throttle.failed("a", "u")
    assert throttle.retry_after("a", "u") == 4
    clock.now += 61
    assert throttle.retry_after("a", "u") == 0
    throttle.failed("a", "u")
    assert throttle.retry_after("a", "u") == 0  # counting starts over
    throttle.failed("a", "u")
    throttle.succeeded("a", "U")  # usernames compare case-insensitively
    assert throttle.retry_after("a", "u") == 0


@pytest.fixture
def proxied_fleet(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[RunningFleet]:
    running = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", trusted_proxies="127.0.0.1",
                          login_max_failures=2)
    running.add_user("ana")
    yield running
    running.stop()


def _login(fleet: RunningFleet, user: str, password: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return httpx.post(f"{fleet.url}/api/login", json={"username": user, "password": password}, headers=headers)


def test_an_attacker_slows_only_the_user_they_guess_from_their_own_address(proxied_fleet: RunningFleet) -> None:
    attacker = "203.0.113.7"
    for _ in range(2):
        assert _login(proxied_fleet, "admin", "wrong", attacker).status_code == 401
    assert _login(proxied_fleet, "admin", "wrong", attacker).status_code == 401  # the first throttled failure
    slowed = _login(proxied_fleet, "admin", PASSWORD, attacker)
    assert slowed.status_code == 429 and int(slowed.headers["Retry-After"]) >= 1
    assert "retry in" in slowed.json()["detail"]
    # The real admin, at the office, and another user behind the attacker's address: both fine.
    assert _login(proxied_fleet, "admin", PASSWORD, "198.51.100.20").status_code == 200
    assert _login(proxied_fleet, "ana", PASSWORD, attacker).status_code == 200


def test_x_forwarded_for_is_believed_only_from_a_configured_proxy(fleet: RunningFleet) -> None:
    # No trusted proxies: rotating the header does not escape the throttle of the real address.
    for i in range(fleet.ctx.settings.login_max_failures + 1):
        assert _login(fleet, "admin", "wrong", f"192.0.2.{i}").status_code == 401
    assert _login(fleet, "admin", PASSWORD, "192.0.2.200").status_code == 429


def test_the_proxy_setting_refuses_what_is_not_an_address() -> None:
    assert load_settings({"trusted_proxies": "10.0.0.1, 10.1.0.0/16"}, environ={}).trusted_proxies == \
        ("10.0.0.1", "10.1.0.0/16")
    with pytest.raises(ConfigError, match=r"trusted_proxies.*'proxy\.local' is not an IP address or network"):
        load_settings({"trusted_proxies": "proxy.local"}, environ={})


@pytest.mark.parametrize("path", ["/api/units", "/api/alerts", "/", "/alerts"])
def test_a_60_kb_search_is_a_clear_client_error(fleet: RunningFleet, path: str) -> None:
    client, _ = fleet.login()
    response = client.get(path, params={"q": "x" * 60_000})
    assert response.status_code == 422, response.text[:200]  # was a 500 (the engine's LIKE pattern limit)
    assert "at most 200 characters" in response.text
