"""Entry point: ``python -m fake_vllm``.

The worker child runs this same module with ``--worker-of PID`` first; it is
dispatched before the server modules (and aiohttp) are imported, so that an
idle worker costs little memory and start-up time.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--worker-of"]:
        from .worker import worker_main

        return worker_main(argv)
    from .server import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
