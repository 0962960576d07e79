"""The environment variables that override the configuration file.

Each variable is read once and checked; an error names the variable and the
value it holds. A variable set to an empty string counts as unset, because
deployment tools (compose files, unit files) often pass blanks through.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .values import Problems, describe

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

# Docker's own rule for container names, which start with this prefix.
CONTAINER_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_INT_RE: Final = re.compile(r"\+?[0-9]+")


@dataclass(frozen=True)
class EnvSettings:
    """Values taken from the environment; None where the variable is unset or wrong."""

    max_queue: int | None = None  # GATEWAY_MAX_QUEUE_SIZE
    max_concurrent: int | None = None  # GATEWAY_MAX_CONCURRENT
    max_loaded_models: int | None = None  # GATEWAY_MAX_MODELS_CONCURRENT
    max_retries: int | None = None  # GATEWAY_MAX_RETRIES
    retry_delay_s: float | None = None  # GATEWAY_RETRY_DELAY
    retry_backoff: float | None = None  # GATEWAY_RETRY_BACKOFF
    http_pool_size: int | None = None  # GATEWAY_HTTP_POOL_SIZE
    idle_timeout_s: float | None = None  # VLLM_INACTIVITY_TIMEOUT
    request_timeout_s: float | None = None  # VLLM_REQUEST_TIMEOUT
    container_prefix: str | None = None  # VLLM_CONTAINER_PREFIX
    total_gpu_vram_gb: float | None = None  # TOTAL_GPU_VRAM
    allowed_models: tuple[str, ...] | None = None  # ALLOWED_MODELS
    log_level: str | None = None  # LOG_LEVEL


class _EnvReader:
    def __init__(self, env: Mapping[str, str], problems: Problems) -> None:
        self.env = env
        self.problems = problems

    def text(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def integer(self, name: str, *, minimum: int) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        if _INT_RE.fullmatch(value) and int(value) >= minimum:
            return int(value)
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        self.problems.add(name, f"expected {expected}, got {value!r}")
        return None

    def number(self, name: str, *, minimum: float, exclusive: bool = False) -> float | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        too_small = number < minimum or (exclusive and number == minimum)
        if math.isfinite(number) and not too_small:
            return number
        op = ">" if exclusive else ">="
        self.problems.add(name, f"expected a number {op} {minimum:g}, got {value!r}")
        return None


def read_log_level(problems: Problems, where: str, value: object) -> str | None:
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    problems.add(where, f"expected one of {', '.join(LOG_LEVELS)}, got {describe(value)}")
    return None


def read_container_prefix(problems: Problems, where: str, value: object) -> str | None:
    if isinstance(value, str) and CONTAINER_PREFIX_RE.fullmatch(value):
        return value
    problems.add(
        where, f"expected letters, digits, '_', '.' or '-' (a docker name), got {describe(value)}"
    )
    return None


def _allowed_models(reader: _EnvReader) -> tuple[str, ...] | None:
    value = reader.text("ALLOWED_MODELS")
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        reader.problems.add("ALLOWED_MODELS", f"lists no model names, got {value!r}")
        return None
    return names


def read_env(env: Mapping[str, str], problems: Problems) -> EnvSettings:
    reader = _EnvReader(env, problems)
    level = reader.text("LOG_LEVEL")
    prefix = reader.text("VLLM_CONTAINER_PREFIX")
    return EnvSettings(
        max_queue=reader.integer("GATEWAY_MAX_QUEUE_SIZE", minimum=0),
        max_concurrent=reader.integer("GATEWAY_MAX_CONCURRENT", minimum=1),
        max_loaded_models=reader.integer("GATEWAY_MAX_MODELS_CONCURRENT", minimum=1),
        max_retries=reader.integer("GATEWAY_MAX_RETRIES", minimum=0),
        retry_delay_s=reader.number("GATEWAY_RETRY_DELAY", minimum=0),
        retry_backoff=reader.number("GATEWAY_RETRY_BACKOFF", minimum=1),
        http_pool_size=reader.integer("GATEWAY_HTTP_POOL_SIZE", minimum=1),
        idle_timeout_s=reader.number("VLLM_INACTIVITY_TIMEOUT", minimum=0),
        request_timeout_s=reader.number("VLLM_REQUEST_TIMEOUT", minimum=0),
        container_prefix=(
            None
            if prefix is None
            else read_container_prefix(problems, "VLLM_CONTAINER_PREFIX", prefix)
        ),
        total_gpu_vram_gb=reader.number("TOTAL_GPU_VRAM", minimum=0, exclusive=True),
        allowed_models=_allowed_models(reader),
        log_level=None if level is None else read_log_level(problems, "LOG_LEVEL", level),
    )
