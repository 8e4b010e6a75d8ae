"""Shared fixtures. Real services (Mosquitto, PostgreSQL, Chromium) are started per test by helpers
in tests/support; gpiozero pins come from gpiozero's own MockFactory."""

from __future__ import annotations

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from tests.support.link_pki import broker, pki  # noqa: F401  (re-exported fixtures: the shipped TLS broker)
from tests.support.mosquitto import mosquitto  # noqa: F401  (re-exported fixture)


@pytest.fixture
def mock_pins():  # type: ignore[no-untyped-def]
    """gpiozero's MockFactory as the pin factory for the test; pins reset afterwards."""
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = previous
