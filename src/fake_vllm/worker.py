"""The idle worker child, standing in for vLLM's EngineCore/Worker processes.

It stays in its parent's process group and ignores the parent's death, like
vLLM's engine processes do, so a gateway that SIGKILLs only the main PID leaves
it behind: the gateway must signal the whole group. It exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

WORKER_FLAG = "--worker-of"


def spawn_worker() -> subprocess.Popen[bytes]:
    """Start the worker in this process's group, sharing stdout and stderr."""
    # Inheriting the output pipes is deliberate: vLLM's engine processes do too,
    # so a gateway reading a killed server's pipes must not wait for EOF.
    return subprocess.Popen(
        [sys.executable, "-m", "fake_vllm", WORKER_FLAG, str(os.getpid())],
        stdin=subprocess.DEVNULL,
    )


def _exit_now(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fake_vllm --worker-of")
    parser.add_argument(WORKER_FLAG, dest="parent", type=int, required=True, metavar="PID")
    args = parser.parse_args(list(argv))
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    print(
        f"(EngineCore_DP0 pid={os.getpid()}) INFO fake worker of {args.parent} is idle",
        flush=True,
    )
    while True:
        signal.pause()
