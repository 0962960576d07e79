"""What the figures were measured on: the machine and the versions of what ran."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil

from .wrk import wrk_path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        # The machine may be shared: the load before the run says how quiet it was.
        "load_average": os.getloadavg(),
    }


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    exe = wrk_path()
    if exe is None:
        return "not installed"
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10, check=False)
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 else "?"


def tool_versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "aiohttp": _dist_version("aiohttp"),
        "psutil": _dist_version("psutil"),
        "vllm-gateway": _dist_version("vllm-gateway"),
        "wrk": _wrk_version(),
    }
