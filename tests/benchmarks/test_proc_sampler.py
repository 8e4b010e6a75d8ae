"""The fleet benchmarks' one process sampler (benchmarks/proc_sampler.py): CPU seconds and RSS of named
processes and process trees from /proc, and CPU shares over exactly a window of wall-clock time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.proc_sampler import ProcessSampler, proc_cpu_s, tree_cpu_s

BURN = "import time\nwhile time.process_time() < 0.3:\n    pass\ntime.sleep(120)\n"  # 0.3 s of CPU, then idle


def test_a_child_is_sampled_while_it_runs_and_dropped_once_it_has_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN])
    t0 = time.time()
    sampler = ProcessSampler({"child": child.pid}, trees={"this test": os.getpid()}, interval_s=0.05)
    try:
        deadline = time.monotonic() + 120  # a hang guard: the child's 0.3 s of CPU may take long on a busy host
        while time.monotonic() < deadline and proc_cpu_s(child.pid) < 0.2:  # /proc counts in clock ticks
            time.sleep(0.05)
        assert proc_cpu_s(child.pid) >= 0.2
        last = sampler.sample_once()
        assert last.cpu_s["child"] >= 0.2 and last.rss_mb["child"] > 1
        assert last.cpu_s["this test"] >= last.cpu_s["child"]  # the tree counts its children
        shares, machine_cores = sampler.shares(t0, time.time())
        assert shares["child"] > 0 and shares["this test"] >= shares["child"] - 1e-9
        assert 0 <= machine_cores <= (os.cpu_count() or 1) + 0.01
        timeline = sampler.timeline("child")
        assert [cpu for _, cpu, _ in timeline] == sorted(cpu for _, cpu, _ in timeline)  # cumulative
    finally:
        child.kill()
        child.wait()
    gone = sampler.sample_once()
    assert "child" not in gone.cpu_s and "child" not in gone.rss_mb
    peaks = sampler.stop()
    assert peaks["child"] > 1
    assert tree_cpu_s(child.pid) == 0.0  # a process that has gone has no tree left


def test_shares_need_two_samples_inside_the_window() -> None:
    sampler = ProcessSampler({"me": os.getpid()}, interval_s=60)  # no sample of its own in this test
    sampler.sample_once()
    shares, machine_cores = sampler.shares(0, time.time())
    sampler.stop()
    assert shares == {} and machine_cores != machine_cores  # NaN: one sample spans no time
