"""``python -m bench.ray_start``: what the Ray launcher costs against the subprocess launcher.

Run it from the venv that has Ray (``.venv-ray``, made by ``scripts/ci_ray.sh``). It starts
a local Ray cluster (a head and one node with one declared GPU, see ``tests/ray/cluster.py``)
and two gateways with the same fake backend as their model: one with ``launcher: ray``
(``gpus: ray``), one with the subprocess launcher. Two figures, each paired in the same run:

* **cold start**: a request for a stopped model until its answer, then
  ``/gateway/models/NAME/unload``; alternating between the two gateways, ``--repeats``
  times; the Ray overhead is the median of the paired differences (target < 0.5 s);
* **proxy overhead**: sequential one-token requests through each gateway and straight to
  its backend, the Ray one at the node's address (what the gateway proxies to), the
  subprocess one on loopback; the gateway's overhead is p50 through it minus p50 direct.

Results go to ``bench/results/ray-start-TIMESTAMP.json``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "ray")]

from cluster import start_cluster
from harness import GatewayProc, fake_command, start_gateway

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_COLD_OVERHEAD_S = 0.5
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def _cold_start(gw: GatewayProc) -> float:
    with gw.client(timeout=120) as client:
        t0 = time.perf_counter()
        response = client.post("/v1/chat/completions", json=BODY)
        took = time.perf_counter() - t0
        assert response.status_code == 200, response.text
        assert client.post("/gateway/models/m/unload").status_code == 200
    gw.wait_state("m", "stopped")
    return took


def _p50_ms(urls: tuple[str, str], requests: int) -> tuple[float, float]:
    """p50 of each URL, requests interleaved so that drift of the machine hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    with httpx.Client(timeout=30) as client:
        for i in range(requests + 5):
            for url, seen in zip(urls, times, strict=True):
                t0 = time.perf_counter()
                assert client.post(url + "/v1/chat/completions", json=BODY).status_code == 200
                if i >= 5:
                    seen.append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def _backend_url(gw: GatewayProc, ray: bool) -> str:
    model = gw.model("m")
    host = model.get("node_ip") if ray else "127.0.0.1"
    return f"http://{host}:{model['port']}"


def run(repeats: int, requests: int) -> dict[str, Any]:
    cluster = start_cluster([1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    gateways: list[GatewayProc] = []
    try:
        model = {"command": fake_command("--host", "0.0.0.0", "--no-worker", "--tokens", "1",
                                         startup_delay=0.2),
                 "vram_gb": 10, "idle_timeout_s": 3600}
        for sub in ("ray", "sub"):
            (tmp / sub).mkdir()
        ray_gw = start_gateway(tmp / "ray", {"m": {**model, "launcher": "ray"}}, gpus="ray",
                               ray={"address": "auto", "gpu_vram_gb": 24},
                               env={"RAY_ADDRESS": cluster.address})
        gateways.append(ray_gw)
        sub_gw = start_gateway(tmp / "sub", {"m": model}, gpus=[{"id": 0, "vram_gb": 24}])
        gateways.append(sub_gw)
        pairs = []
        for i in range(repeats):
            order = (ray_gw, sub_gw) if i % 2 == 0 else (sub_gw, ray_gw)
            took = {gw.port: _cold_start(gw) for gw in order}
            pairs.append((took[ray_gw.port], took[sub_gw.port]))
        proxy = {}
        for name, gw, ray in (("ray", ray_gw, True), ("subprocess", sub_gw, False)):
            with gw.client(timeout=120) as client:
                assert client.post("/v1/chat/completions", json=BODY).status_code == 200
            backend = _backend_url(gw, ray)
            direct, through = _p50_ms((backend, gw.url), requests)
            proxy[name] = {"backend": "node address" if ray else "loopback",
                           "direct_p50_ms": round(direct, 3), "gateway_p50_ms": round(through, 3)}
            proxy[name]["overhead_ms"] = round(
                proxy[name]["gateway_p50_ms"] - proxy[name]["direct_p50_ms"], 3)
    finally:
        for gw in gateways:
            gw.stop()
        cluster.stop()
    overhead = statistics.median(r - s for r, s in pairs)
    return {"cold_start_s": {"ray": [round(r, 3) for r, _ in pairs],
                             "subprocess": [round(s, 3) for _, s in pairs],
                             "ray_median": round(statistics.median(r for r, _ in pairs), 3),
                             "subprocess_median": round(statistics.median(s for _, s in pairs), 3),
                             "ray_overhead_median": round(overhead, 3),
                             "target_overhead_s": TARGET_COLD_OVERHEAD_S,
                             "pass": overhead < TARGET_COLD_OVERHEAD_S},
            "proxy": proxy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="one cold start, 20 requests")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    repeats, requests = (1, 20) if args.smoke else (args.repeats, args.requests)
    import ray

    result = {"bench": "ray_start", "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "ray": ray.__version__, "repeats": repeats, "requests": requests,
              "machine": machine_info(), **run(repeats, requests)}
    cold, proxy = result["cold_start_s"], result["proxy"]
    print(f"cold start: ray {cold['ray_median']:.3f} s, subprocess {cold['subprocess_median']:.3f}"
          f" s, Ray overhead {cold['ray_overhead_median'] * 1000:.0f} ms (target < "
          f"{TARGET_COLD_OVERHEAD_S * 1000:.0f} ms: {'PASS' if cold['pass'] else 'FAIL'})")
    for name, row in proxy.items():
        print(f"proxy {name:10s} backend at {row['backend']:12s} direct p50 "
              f"{row['direct_p50_ms']:.2f} ms, through the gateway {row['gateway_p50_ms']:.2f} ms"
              f" (+{row['overhead_ms']:.2f} ms)")
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"ray-start-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
