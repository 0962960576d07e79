"""The process between a node agent and a model server: ``python -S -c SOURCE ARGV...``.

When a Ray worker exits, its raylet SIGKILLs the worker's direct children. A model server
that was a direct child would die without stopping its own workers (SIGKILL of vLLM's api
server leaves its engine core and workers running). The keeper is that direct child
instead: it runs the server in the keeper's own process group with a parent-death signal of
SIGTERM tied to the keeper, so however the keeper goes, the server gets SIGTERM and stops
its workers. The keeper outlives a SIGTERM sent to the group, so that it can exit with the
server's own code once the server is gone. It imports nothing outside the standard library.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _term_with_keeper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str]) -> int:
    if not argv:
        print("ray_keeper: no command given", file=sys.stderr)
        return 2
    # A handler, not SIG_IGN: handlers are reset by exec, so the server still gets SIGTERM.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server = subprocess.Popen(argv, preexec_fn=_term_with_keeper)  # noqa: PLW1509
    except OSError as exc:
        print(f"cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        return 127
    while True:
        try:
            code = server.wait()
            break
        except InterruptedError:
            continue
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
