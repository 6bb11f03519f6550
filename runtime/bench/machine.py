"""The machine a run was made on and how loaded it was, and the process's resident memory (Linux /proc)."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Optional

import cv2
import numpy as np
import onnxruntime


def rss_bytes() -> Optional[int]:
    """Resident set size of this process now (Linux /proc; None where it cannot be read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class LoadMeter:
    """How busy the machine was with other work while the benchmark ran (Linux /proc/stat)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> Optional[tuple[float, float, float]]:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields) - idle) / ticks, time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, Optional[float]]:
        end = self._sample()
        report: dict[str, Optional[float]] = {"load_average_end": _loadavg(), "other_processes_cpu_percent": None}
        if self.start is not None and end is not None:
            busy = end[0] - self.start[0]
            wall = end[1] - self.start[1]
            own = end[2] - self.start[2]
            cores = os.cpu_count() or 1
            report["other_processes_cpu_percent"] = max(0.0, 100.0 * (busy - own) / (wall * cores))
        return report


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_description(backend: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") or line.startswith("Model"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as info:
            memory_gib = round(int(info.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "backend": backend,
        "load_average_start": _loadavg(),
    }
