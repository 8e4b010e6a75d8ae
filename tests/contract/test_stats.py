"""One percentile for the whole house: the heartbeat, health, the fleet's ingest stats and selftest agree."""

from __future__ import annotations

import pytest

from contract.stats import percentile
from edge.report.health import Metrics
from fleet.ingest import LatencyWindow


def test_every_reporter_gives_the_same_nearest_rank_figures_for_the_same_samples() -> None:
    samples = [float(v) for v in range(1, 101)]  # 1..100 ms: p50 = 50, p95 = 95 by nearest rank
    metrics = Metrics()  # the device's one registry: the heartbeat and the status line both read it
    for v in samples:
        metrics.observe_inference(v)
    assert metrics.inference_percentiles() == (50.0, 95.0)
    window = LatencyWindow()
    window.add_many([v / 1000 for v in samples])
    summary = window.summary()
    assert (summary["p50_ms"], summary["p90_ms"], summary["p99_ms"]) == (50.0, 90.0, 99.0)


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan")])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile([1.0, 2.0], q)
