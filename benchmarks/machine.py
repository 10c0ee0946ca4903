"""What every benchmark records about where it ran."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def machine() -> dict:
    """CPU model, core count, torch and Python versions, local date and the 1-minute load average."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = model or "unknown"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_1m": round(load[0], 2),
    }
