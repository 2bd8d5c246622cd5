"""CPU time from /proc: one process's, and the whole machine's (to spot other load)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE_FIELDS = ("idle", "iowait")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (raises OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds summed over all CPUs since boot."""

    busy: float
    steal: float
    """Time the hypervisor gave to someone else while this machine wanted to run."""

    @classmethod
    def read(cls) -> MachineCpu:
        values = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = dict(zip(_STAT_FIELDS, map(int, values), strict=False))
        busy = sum(n for name, n in ticks.items() if name not in _IDLE_FIELDS)
        return cls(busy=busy / _CLOCK_TICKS, steal=ticks["steal"] / _CLOCK_TICKS)

    def __sub__(self, earlier: MachineCpu) -> MachineCpu:
        return MachineCpu(busy=self.busy - earlier.busy, steal=self.steal - earlier.steal)
