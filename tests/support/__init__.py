"""Test helpers: real services started per test (Mosquitto, ...), never mocks of them."""
