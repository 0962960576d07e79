"""Interleaved A/B of gateway revisions: CPU per request (or per stream) on a noisy machine.

    python -m bench.ab HEAD~3 HEAD              # two revisions against the bare proxy
    python -m bench.ab main --rounds 8 --stream # 32 streams of 64 tokens instead of wrk

A full run of ``bench.proxy`` measures one peer after another, so a machine that gets busier
half-way (other jobs on a shared machine) moves one row and not the other. Here every
revision (``git archive`` into a temporary folder, run with its own ``src`` first on the
path) and the bare proxy run side by side on the proxy's CPU in front of one upstream, and
the load visits them in turn, round after round, in alternating order. Each prints the median
of its rounds and its ratio to the bare proxy's median: compare those ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from .check import request_body
from .peers import MODEL, Context, _http_ready, gateway_config
from .placement import available_cpus, plan
from .procs import LOOPBACK, Child, Processes, free_port, tree_cpu_seconds, wait_port
from .runner import (
    PLAIN_CONCURRENCY,
    REPO_ROOT,
    STREAM_CONCURRENCY,
    STREAM_TOKENS,
    backend_argv,
    upstream_argv,
)
from .stream_load import run_process
from .wrk import run_wrk, write_script


def checkout(revision: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", revision],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start(procs: Processes, name: str, tree: Path | None, workdir: Path, upstream: int,
          cpus: tuple[int, ...] | None) -> tuple[str, Child]:
    port = free_port()
    if tree is None:
        argv = [sys.executable, "-m", "bench.bare", "--port", str(port), "--upstream",
                f"http://{LOOPBACK}:{upstream}"]
        child = procs.spawn(name, argv, cpus=cpus, cwd=REPO_ROOT)
    else:
        ctx = Context(procs, workdir, tree, upstream, cpus, backend_argv)
        config = gateway_config(ctx, port)
        config["state_dir"] = str(workdir / f"state-{name}")
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "vllm_gateway.cli", "serve", "--config", str(path)]
        child = procs.spawn(name, argv, cpus=cpus, env={"PYTHONPATH": str(tree / "src")},
                            cwd=tree)
    base = f"http://{LOOPBACK}:{port}"
    _http_ready(f"{base}/health", child, 120.0)
    return base, child


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions of this repository")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per visit")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    placement = plan(available_cpus())
    per = "stream" if args.stream else "request"
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp, \
            Processes(Path(tmp)) as procs:
        work = Path(tmp)
        port = free_port()
        upstream = procs.spawn("upstream", upstream_argv(str(port), 0.005),
                               cpus=placement.upstream)
        wait_port(upstream, port, 60.0)
        peers = {"bare": start(procs, "bare", None, work, port, placement.proxy)}
        for index, revision in enumerate(args.revisions):
            tree = checkout(revision, work / f"tree-{index}")
            peers[revision] = start(procs, f"rev-{index}", tree, work, port, placement.proxy)
        script = write_script(work / "plain.lua", request_body(MODEL, 1, stream=False),
                              {"Content-Type": "application/json"})
        cpu_ms: dict[str, list[float]] = {name: [] for name in peers}
        for round_ in range(args.rounds + 1):
            order = list(peers) if round_ % 2 == 0 else list(reversed(peers))
            for name in order:
                base, child = peers[name]
                url = f"{base}/v1/chat/completions"
                before = tree_cpu_seconds(child.pid)
                if args.stream:
                    done = run_process(url, MODEL, concurrency=STREAM_CONCURRENCY,
                                       duration_s=args.duration, max_tokens=STREAM_TOKENS,
                                       headers={}, cpus=placement.load)
                    count = int(str(done["streams"]))
                else:
                    count = run_wrk(url, script, connections=PLAIN_CONCURRENCY,
                                    duration_s=args.duration, cpus=placement.load).requests
                if round_ > 0 and count:  # the first round warms every peer up
                    cpu_ms[name].append((tree_cpu_seconds(child.pid) - before) / count * 1e3)
    floor = statistics.median(cpu_ms["bare"])
    for name, values in cpu_ms.items():
        median = statistics.median(values)
        print(f"{name:>24}: {median:.3f} ms CPU per {per}, {median / floor:.2f}x bare "
              f"(rounds: {', '.join(f'{value:.3f}' for value in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
