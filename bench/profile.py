"""Where a peer's CPU goes under the benchmark's plain load: py-spy, flame graph and summary.

    python -m bench.profile                       # the gateway, plain requests, 10 s
    python -m bench.profile --peer bare --stream  # the bare proxy under 32 streams

The same upstream, peer and load as ``bench.proxy``, with py-spy sampling the peer (its
native frames too: aiohttp's and uvloop's C parts show as themselves). It writes under
bench/results/ the flame graph (SVG), the collapsed stacks (text, for diffing two runs) and
a summary: the functions with the most samples on the stack (total) and on top (self).
py-spy comes from bench/requirements-profile.txt.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import html
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from .check import request_body
from .peers import MODEL, PEERS, Context
from .placement import available_cpus, plan
from .procs import Processes, free_port, pinned, wait_port
from .runner import (
    PLAIN_CONCURRENCY,
    REPO_ROOT,
    RESULTS_DIR,
    STREAM_CONCURRENCY,
    STREAM_TOKENS,
    backend_argv,
    upstream_argv,
)
from .stream_load import run_process
from .wrk import run_wrk, write_script

TOP = 40


def py_spy_path() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def summarize(collapsed: str, top: int = TOP) -> str:
    """Total and self shares per function from py-spy's collapsed stacks ("a;b;c count")."""
    total: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        samples += count
        for frame in set(frames):
            total[frame] += count
        own[frames[-1]] += count
    if samples == 0:
        return "no samples\n"
    lines = [f"{samples} samples", "", f"{'total %':>8} {'self %':>7}  function"]
    for frame, count in total.most_common(top):
        lines.append(f"{100 * count / samples:8.1f} {100 * own[frame] / samples:7.1f}  {frame}")
    lines += ["", "by self time:", f"{'self %':>8}  function"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / samples:8.1f}  {frame}")
    return "\n".join(lines) + "\n"


def neutral_title(svg: str, title: str) -> str:
    """py-spy titles the flame graph with its command line, paths of this machine included."""
    return re.sub(r'(<text id="title"[^>]*>)[^<]*(</text>)',
                  lambda m: m.group(1) + html.escape(title) + m.group(2), svg, count=1)


def _short(frame: str) -> str:
    # "handle (aiohttp/web_protocol.py:512)" -> "handle (aiohttp/web_protocol.py)": lines
    # split one function into many rows.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="gateway", choices=[n for n in PEERS if n != "direct"])
    parser.add_argument("--stream", action="store_true", help="32 streams instead of wrk")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    spy = py_spy_path()
    if spy is None:
        print("py-spy is not installed: pip install -r bench/requirements-profile.txt",
              file=sys.stderr)
        return 2
    placement = plan(available_cpus())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = "stream" if args.stream else "plain"
    stem = args.out / f"profile-{args.peer}-{kind}-{stamp}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, \
            Processes(Path(tmp)) as procs:
        port = free_port()
        upstream = procs.spawn("upstream", upstream_argv(str(port), 0.005),
                               cpus=placement.upstream)
        wait_port(upstream, port, 60.0)
        ctx = Context(procs, Path(tmp), REPO_ROOT, port, placement.proxy, backend_argv)
        endpoint = PEERS[args.peer].start(ctx)
        assert endpoint.child is not None
        url = f"{endpoint.base_url}/v1/chat/completions"
        script = write_script(Path(tmp) / "load.lua", request_body(MODEL, 1, stream=False),
                              {"Content-Type": "application/json", **endpoint.headers})
        run_wrk(url, script, connections=PLAIN_CONCURRENCY, duration_s=2, cpus=placement.load)
        collapsed = stem.with_suffix(".collapsed.txt")
        # One tracer at a time can stop the process for its native stacks: the flame graph
        # and the collapsed stacks are recorded one after the other under the same load.
        record = [spy, "record", "--pid", str(endpoint.child.pid), "--rate", str(args.rate),
                  "--duration", str(round(args.duration)), "--native", "--gil"]
        load = threading.Thread(target=_load, args=(args, url, endpoint.headers, script,
                                                    placement.load))
        load.start()
        for fmt, path in (("flamegraph", stem.with_suffix(".svg")), ("raw", collapsed)):
            subprocess.run(pinned([*record, "--format", fmt, "--output", str(path)],
                                  placement.load),
                           timeout=args.duration + 60, check=False)
        load.join()
    text = collapsed.read_text() if collapsed.exists() else ""
    svg = stem.with_suffix(".svg")
    if svg.exists():
        svg.write_text(neutral_title(svg.read_text(),
                                     f"py-spy --native --gil: {args.peer}, {kind} load"))
    summary = summarize(text)
    stem.with_suffix(".txt").write_text(
        f"py-spy --native, {args.peer}, {kind} load, {args.duration:g} s\n\n{summary}")
    print(summary)
    print(f"[profile] wrote {stem}.svg, .txt and .collapsed.txt")
    return 0


def _load(args: argparse.Namespace, url: str, headers: dict[str, str], script: Path,
          cpus: tuple[int, ...] | None) -> None:
    if args.stream:
        run_process(url, MODEL, concurrency=STREAM_CONCURRENCY, duration_s=2 * args.duration + 2,
                    max_tokens=STREAM_TOKENS, headers=headers, cpus=cpus)
    else:
        run_wrk(url, script, connections=PLAIN_CONCURRENCY, duration_s=2 * args.duration + 2,
                cpus=cpus)


if __name__ == "__main__":
    sys.exit(main())
