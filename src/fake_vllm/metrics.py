"""``/metrics`` in vLLM's Prometheus text: the gauges a gateway reads, with vLLM's labels."""

from __future__ import annotations

import json
import time

from aiohttp import web

from .state import STATE, BackendState

SLEEP_STATE_HELP = (
    "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
    "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2."
)


def _gauge(name: str, help_text: str, labels: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name}{{{labels}}} {value!r}\n"


def _sleep_state(state: BackendState, labels: str) -> str:
    # Exported with or without dev mode, as vLLM does.
    name = "vllm:engine_sleep_state"
    lines = "".join(
        f'{name}{{{labels},sleep_state="{key}"}} {float(value)!r}\n'
        for key, value in state.engine.sleep_state().items()
    )
    return f"# HELP {name} {SLEEP_STATE_HELP}\n# TYPE {name} gauge\n{lines}"


def render(state: BackendState) -> str:
    labels = f'engine="0",model_name={json.dumps(state.settings.model_name)}'
    running = float(state.stats.in_flight)
    # The fake has no KV cache: usage grows with concurrency, full at 256 requests.
    usage = min(1.0, running / 256)
    text = (
        _gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            running,
        )
        # Held requests (the engine asleep) count as neither running nor waiting.
        + _gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, 0.0
        )
        + _gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, usage
        )
        + _sleep_state(state, labels)
        + "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        + "# TYPE vllm:request_success_total counter\n"
        + "".join(
            f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(n)!r}\n'
            for reason, n in sorted(state.finished.items())
        )
    )
    if state.settings.enable_lora:
        # A gauge whose value is a timestamp, one series per combination of labels.
        text += _gauge(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            state.adapters.requests_info(),
            time.time(),
        )
    return text


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=render(request.app[STATE]),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )
