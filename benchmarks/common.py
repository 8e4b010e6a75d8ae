"""Shared bits of the benchmark scripts: machine description, percentiles, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from contract.stats import percentile

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def pct(values: list[float], q: float) -> float:
    """q in 0..1; the house's one nearest-rank percentile (contract.stats); NaN for no values."""
    return percentile(values, q * 100) if values else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "p95": round(pct(values, 0.95), 3),
            "p99": round(pct(values, 0.99), 3), "mean": round(statistics.fmean(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3), "n": len(values)}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
