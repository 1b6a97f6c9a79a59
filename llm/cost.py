"""What a run costs, stage by stage: wall-clock seconds and the process's peak resident memory.

The peak is the operating system's high-water mark (``getrusage``'s ``ru_maxrss``), which only
grows: read after each stage, the stage where it jumps is the one that set it. Benchmarks compare
costs as ratios from one run (``benchmarks/``); these are the rows' own clocks.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field


def peak_rss_gb() -> float:
    """The process's peak resident set so far, in GiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass
class StageClock:
    """Seconds spent in each stage since the previous :meth:`lap`, and the peak memory after it."""

    last: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_gb: dict[str, float] = field(default_factory=dict)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.last
        self.peak_gb[stage] = peak_rss_gb()
        self.last = now
