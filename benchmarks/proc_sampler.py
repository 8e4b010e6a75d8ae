"""CPU time and memory of processes, read from /proc and sampled on a thread: the one sampler of the fleet
benchmarks (`bench_fleet.py`'s servers, and the `--ladder`'s servers, broker, simulator and PostgreSQL).

CPU is sampled as cumulative CPU seconds, so a share of one core is taken over exactly the window a load
ran (`ProcessSampler.shares`), whatever the sampling period; the machine's busy jiffies come with every
sample, to tell our processes' CPU from what other processes on a shared machine used.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `wait_s`."""
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MB (VmRSS: resident now; VmHWM: the peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a process and its descendants (PostgreSQL's backends are children of the postmaster)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += proc_cpu_s(pid)
        except (OSError, IndexError):
            continue
        todo.extend(children.get(pid, []))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


@dataclass(frozen=True)
class Sample:
    t: float  # wall clock (time.time), to line samples up with the simulator's report
    cpu_s: dict[str, float]  # cumulative CPU seconds per name; a process that has gone is absent
    rss_mb: dict[str, float]  # resident memory per name (processes, not trees)
    busy: float  # the machine's busy jiffies
    total: float  # the machine's total jiffies


class ProcessSampler:
    """Every `interval_s` (on its own thread, from construction to `stop`): CPU seconds and RSS of the named
    processes, CPU seconds of the named process trees, and the machine's busy jiffies."""

    def __init__(self, pids: dict[str, int], trees: dict[str, int] | None = None, interval_s: float = 0.5) -> None:
        self.pids = pids
        self.trees = trees or {}
        self.interval_s = interval_s
        self.peak_rss_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def sample_once(self) -> Sample:
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, IndexError):  # the process has gone
                rss[name] = proc_rss_mb(pid)
                cpu[name] = proc_cpu_s(pid)
                self.peak_rss_mb[name] = max(self.peak_rss_mb[name], rss[name])
        for name, root in self.trees.items():
            cpu[name] = tree_cpu_s(root)
        busy, total = machine_busy()
        sample = Sample(time.time(), cpu, rss, busy, total)
        self.samples.append(sample)
        return sample

    def shares(self, start: float, end: float) -> tuple[dict[str, float], float]:
        """Between two wall-clock times: the CPU share of one core of each name (from its first and last
        sample inside the window), and the machine's busy cores (NaN with fewer than two samples)."""
        inside = [s for s in self.samples if start <= s.t <= end]
        out: dict[str, float] = {}
        for name in [*self.pids, *self.trees]:
            seen = [s for s in inside if name in s.cpu_s]
            if len(seen) >= 2 and seen[-1].t > seen[0].t:
                out[name] = (seen[-1].cpu_s[name] - seen[0].cpu_s[name]) / (seen[-1].t - seen[0].t)
        if len(inside) < 2 or inside[-1].total <= inside[0].total:
            return out, math.nan
        first, last = inside[0], inside[-1]
        return out, (last.busy - first.busy) / (last.total - first.total) * (os.cpu_count() or 1)

    def timeline(self, name: str) -> list[tuple[float, float, float]]:
        """(wall time, CPU seconds, RSS MB) of one process, for every sample it was alive in."""
        return [(s.t, s.cpu_s[name], s.rss_mb[name]) for s in self.samples if name in s.cpu_s and name in s.rss_mb]

    def stop(self) -> dict[str, float]:
        """End the sampling; the peak RSS (MB) per process."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2)
        return {k: round(v, 1) for k, v in self.peak_rss_mb.items()}
