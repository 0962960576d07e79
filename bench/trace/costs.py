"""What a vLLM server of ``vram_gb`` costs in trace seconds (TRACES.md, "Costs")."""

from __future__ import annotations

STOP_S = 1.0
SLEEP_RESIDUAL_GB = 2.0  # what a sleeping server keeps on its GPU


def cold_start_s(vram_gb: float) -> float:
    return 24.0 + 1.0 * vram_gb


def wake_s(vram_gb: float) -> float:
    return 0.3 + 0.04 * vram_gb


def sleep_s(vram_gb: float) -> float:
    return 0.2 + 0.03 * vram_gb


def decode_tok_s(vram_gb: float) -> float:
    return min(80.0, 1600.0 / vram_gb)


def prefill_tok_s(vram_gb: float) -> float:
    return min(10_000.0, 160_000.0 / vram_gb)


def prefill_s(vram_gb: float, prompt_tokens: int) -> float:
    return prompt_tokens / prefill_tok_s(vram_gb)


def service_s(vram_gb: float, prompt_tokens: int, output_tokens: int) -> float:
    """A request's own time on a ready server: prefill, then decode."""
    return prefill_s(vram_gb, prompt_tokens) + output_tokens / decode_tok_s(vram_gb)
