"""``vllm-gateway status`` as a person reads it: every state, and an 80-column terminal.

Rendered in-process with rich's own console at a fixed width, from a status
document shaped like the gateway's.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from vllm_gateway.client import render

NAMES = ["qwen2.5-coder-32b-instruct", "llama-3.1-8b-instruct", "mistral-small-24b",
         "bge-m3", "phi-4-mini", "gemma-3-27b", "vision-11b", "broken-7b"]


def model(name: str, state: str, **fields: Any) -> dict[str, Any]:
    doc = {"name": name, "state": state, "vram_gb": 16.0, "gpus": [], "node": None,
           "in_flight": 0, "queued": 0, "max_concurrent": 50, "max_queue": 200,
           "last_used": None, "port": None, "pid": None, "last_start_s": None,
           "starting_for_s": None, "retry_in_s": None, "failed_starts": 0, "error": None,
           "sleep": None, "sleep_level": None, "last_wake_s": None, "wake_check_failures": 0}
    doc.update(fields)
    return doc


def status_doc() -> dict[str, Any]:
    running = {"gpus": [0], "port": 41234, "pid": 123456, "last_start_s": 41.7}
    return {
        "gpus": [{"id": 0, "node": None, "vram_gb": 80.0, "used_gb": 49.0, "driver_used_gb": 51.5}],
        "host_memory": {"total_gb": 115.2, "used_gb": 16.0},
        "models": [
            model(NAMES[0], "ready", in_flight=12, sleep=1, last_wake_s=0.4, **running),
            model(NAMES[1], "starting", starting_for_s=12.4, gpus=[0], port=41235, pid=123457),
            model(NAMES[2], "draining", in_flight=1, **running),
            model(NAMES[3], "sleeping", sleep=1, sleep_level=1, **running),
            model(NAMES[4], "waking", sleep=2, **running),
            model(NAMES[5], "stopped"),
            model(NAMES[6], "backoff", retry_in_s=24.2, failed_starts=2,
                  error="the server exited with code 1 before it was ready: CUDA out of memory"),
            model(NAMES[7], "held", failed_starts=5,
                  error="the server exited with code 2 before it was ready: unknown model type"),
        ],
    }


def rendered(width: int, doc: dict[str, Any] | None = None) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(render(doc or status_doc(), console))
    return console.export_text()


def model_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] in NAMES:
            rows[cells[0]] = line
    return rows


def header(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if re.match(r"┃ model\s", ln))
    return [c.strip() for c in line.split("┃")[1:-1]]


def test_at_80_columns_every_name_is_whole_and_other_columns_give_way() -> None:
    text = rendered(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = model_rows(text)
    assert sorted(rows) == sorted(NAMES), text  # each name whole, on one line
    assert "…" not in "".join(rows.values())
    columns = header(text)
    assert columns[:2] == ["model", "state"]
    # The least useful columns went first, the counts people watch stayed.
    assert "pid" not in columns and "port" not in columns
    assert "in flight" in columns, columns


def test_a_wide_terminal_shows_every_column() -> None:
    columns = header(rendered(200))
    assert columns == ["model", "state", "GPUs", "VRAM", "in flight", "queued", "last used",
                       "last start", "port", "pid"]


def test_new_states_carry_their_hints() -> None:
    text = rendered(200)
    rows = model_rows(text)
    assert re.search(r"│ sleeping L1\s", rows[NAMES[3]])
    assert re.search(r"│ backoff 24 s\s", rows[NAMES[6]])
    assert re.search(r"│ starting 12 s\s", rows[NAMES[1]])
    assert re.search(r"│ 41\.7 s, wake 0\.4 s\s", rows[NAMES[0]])
    for name, state in [(NAMES[2], "draining"), (NAMES[4], "waking"), (NAMES[7], "held")]:
        assert re.search(rf"│ {state}\s+│", rows[name]), rows[name]
    lines = text.splitlines()
    assert "host RAM held by sleepers: 16 / 115.2 GB" in lines
    assert (f"{NAMES[6]}: the server exited with code 1 before it was ready: CUDA out of memory "
            "(next try in 24 s)") in lines
    held = next(line for line in lines if line.startswith(f"{NAMES[7]}: "))
    assert f"held after 5 failed starts in a row; `vllm-gateway load {NAMES[7]}` tries again" in held


def test_each_state_has_its_own_style() -> None:
    console = Console(width=200, record=True, force_terminal=True, color_system="truecolor")
    console.print(render(status_doc(), console))
    styled = console.export_text(styles=True)
    codes = {}
    for state in ("ready", "starting", "draining", "sleeping", "waking", "stopped", "backoff",
                  "held"):
        found = re.search(rf"(\x1b\[[0-9;]+m){state}\x1b\[0m", styled)
        assert found, state
        codes[state] = found.group(1)
    assert len(set(codes.values())) == len(codes), codes


def test_a_cluster_shows_nodes_and_no_host_line_without_sleepers() -> None:
    doc = status_doc()
    doc["gpus"][0]["node"] = "gpu-a"
    doc["host_memory"]["used_gb"] = 0.0
    doc["models"] = [model(NAMES[0], "ready", gpus=[0], node="gpu-a")]
    text = rendered(200, doc)
    assert re.search(r"│ 0\s+│ gpu-a\s+│ 49 GB", text)
    assert "node" in header(text)
    assert "host RAM" not in text
