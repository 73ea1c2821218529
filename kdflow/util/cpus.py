"""How many CPUs this process may really use (worker pools, thread counts)."""

from __future__ import annotations


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota. torch counts
    the node's cores, so in a pod limited to 2 CPUs on a 64-core node it would start 64 threads,
    be throttled, and report latencies that measure the throttling."""
    import math
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: the affinity mask alone
    return max(1, cpus)
