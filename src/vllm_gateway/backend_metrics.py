"""What vLLM itself reports on its ``/metrics``: requests running and waiting, KV-cache use."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

WANTED = {
    "vllm:num_requests_running": "num_requests_running",
    "vllm:num_requests_waiting": "num_requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_perc",
    # Older vLLM releases call the KV-cache gauge by its GPU name.
    "vllm:gpu_cache_usage_perc": "kv_cache_usage_perc",
}


# vllm:engine_sleep_state has one series per state, 1 for the one the engine is in.
SLEEP_STATE = "vllm:engine_sleep_state"
SLEEP_LEVELS = {"awake": 0.0, "weights_offloaded": 1.0, "discard_all": 2.0}


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum each wanted gauge over engines; unknown or malformed lines are skipped.

    ``engine_sleep_level`` (0 awake, 1 weights offloaded, 2 all discarded) is the deepest
    level any engine reports, present only where the server exports its sleep state."""
    found: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == SLEEP_STATE:
                    level = SLEEP_LEVELS.get(sample.labels.get("sleep_state", ""))
                    if level is not None and float(sample.value) >= 1:
                        found["engine_sleep_level"] = max(found.get("engine_sleep_level", 0.0),
                                                          level)
                    continue
                key = WANTED.get(sample.name)
                if key is not None:
                    found[key] = found.get(key, 0.0) + float(sample.value)
    except (ValueError, TypeError):
        return found
    return found


async def scrape_backend_metrics(session: aiohttp.ClientSession, base_url: str,
                                 model: str) -> dict[str, float] | None:
    try:
        async with session.get(base_url + "/metrics",
                               timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError):
        return None
    found = parse_vllm_metrics(text)
    return found or None
