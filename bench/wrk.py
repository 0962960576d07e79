"""Plain (non-streaming) load with wrk, run as its own pinned process.

wrk is driven by a small Lua script: it sets the POST body and headers, and at
the end writes its own summary as one JSON line, so nothing depends on the
layout of wrk's human-readable report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .procs import pinned

_LUA = """\
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    non2xx: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors == 0 and self.non2xx == 0


def _lua_string(text: str) -> str:
    # A long bracket with enough '=' never needs escaping, whatever the text holds.
    level = "=" * (max((len(run) for run in re.findall("=+", text)), default=0) + 1)
    return f"[{level}[{text}]{level}]"


def write_script(path: Path, body: bytes, headers: Mapping[str, str]) -> Path:
    lines = [
        f"wrk.headers[ {_lua_string(key)} ] = {_lua_string(value)}"
        for key, value in headers.items()
    ]
    path.write_text(_LUA.format(body=_lua_string(body.decode()), headers="\n".join(lines)))
    return path


def parse_output(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1e6,
                errors=int(data["errors"]),
                non2xx=int(data["non2xx"]),
                p50_ms=int(data["p50_us"]) / 1e3,
                p99_ms=int(data["p99_us"]) / 1e3,
                mean_ms=float(data["mean_us"]) / 1e3,
            )
    raise WrkError(f"wrk printed no summary:\n{stdout[-2000:]}")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    cpus: Sequence[int] | None,
) -> WrkResult:
    """One wrk run; its threads are bounded by the load CPUs and by ``connections``."""
    exe = wrk_path()
    if exe is None:
        raise WrkError("wrk is not installed (scripts/install_bench_tools.sh)")
    threads = max(1, min(connections, len(cpus) if cpus else 2))
    # wrk takes whole seconds or a unit suffix; milliseconds are not accepted.
    seconds = max(1, round(duration_s))
    argv = [
        exe,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        "--timeout=10s",
        f"--script={script}",
        url,
    ]
    done = subprocess.run(
        pinned(argv, cpus), capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return parse_output(done.stdout)
