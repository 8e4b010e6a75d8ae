"""Training tests run real (tiny) CPU training; on a busy 2-core machine they can take many minutes.

The suite-wide 300 s timeout is a hang guard, not a speed target (speed lives in benchmarks/), so the
training tests get a longer guard instead of failing when the host is loaded.
"""

from __future__ import annotations

import pytest

TRAINING_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/tools/" in str(item.path) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TRAINING_TIMEOUT_S))
