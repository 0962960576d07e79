"""The soak script's smoke mode: a few seconds of swaps, kills and cancellations that must end
with the counters at 0 and no process left (the full soak runs by hand, for minutes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_soak_smoke_passes() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--smoke", "--seed", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for line in (r"requests\s+[1-9]\d*", r"in_flight at end\s+0", r"queued at end\s+0",
                 r"processes left\s+0", r"result\s+PASS"):
        assert re.search(rf"^{line}$", done.stdout, re.MULTILINE), (line, done.stdout)
