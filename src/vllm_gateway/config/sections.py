"""The top-level sections besides ``defaults``, ``models`` and ``auth``.

Each section's keys are its dataclass's fields and each default is the field's
default: a key is added to a section by adding a field to :mod:`.schema`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Final, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from .env import EnvSettings, read_container_prefix, read_log_level
from .schema import (
    FaultConfig,
    GatewayConfig,
    GpuSpec,
    LogFormat,
    RayConfig,
    RetryConfig,
    ServerConfig,
)
from .values import Problems, Section, describe, read_int, read_number, read_str

T = TypeVar("T")
LOG_FORMATS: Final = get_args(LogFormat)
BASE: Final = GatewayConfig()


def keys_of(cls: type[object]) -> tuple[str, ...]:
    """The keys of a section: its dataclass's fields that a file may set."""
    return tuple(f.name for f in fields(cls) if f.init)  # type: ignore[arg-type]


# "defaults" is not a field: it is folded into each model.
TOP_KEYS: Final = (*keys_of(GatewayConfig), "defaults")


def pick(override: T | None, fallback: T) -> T:
    return fallback if override is None else override


def read_server(problems: Problems, raw: object, host: str | None, port: int | None) -> ServerConfig:
    sec = Section(problems, "server", raw, keys_of(ServerConfig))
    base = ServerConfig()
    chosen_host = sec.get_str("host", base.host, no_whitespace=True)
    if host is not None:
        chosen_host = read_str(problems, "--host", host, no_whitespace=True) or chosen_host
    chosen_port = sec.get_int("port", base.port, minimum=0, maximum=65535)
    if port is not None:
        chosen_port = pick(
            read_int(problems, "--port", port, minimum=0, maximum=65535), chosen_port
        )
    return ServerConfig(
        host=chosen_host,
        port=chosen_port,
        shutdown_timeout_s=sec.get_number("shutdown_timeout_s", base.shutdown_timeout_s, minimum=0),
        max_body_mb=sec.get_number("max_body_mb", base.max_body_mb, minimum=0, exclusive=True),
    )


def read_gpus(
    problems: Problems, raw: object, env: EnvSettings
) -> tuple[GpuSpec, ...] | Literal["auto", "ray"] | None:
    # The file wins over TOTAL_GPU_VRAM: the variable is a shortcut for a
    # single-GPU machine without a gpus list, not an override of one.
    if raw is None:
        if env.total_gpu_vram_gb is not None:
            return (GpuSpec(id=0, vram_gb=env.total_gpu_vram_gb),)
        return None
    if raw == "auto" or raw == "ray":
        return raw
    if not isinstance(raw, list) or not raw:
        problems.add(
            "gpus",
            f"expected auto or a list like [{{id: 0, vram_gb: 80}}] or ray (a Ray cluster's GPUs; "
            f"leave gpus out for no GPU accounting), got {describe(raw)}",
        )
        return None
    gpus: list[GpuSpec] = []
    seen: set[int] = set()
    for index, entry in enumerate(raw):
        path = f"gpus[{index}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with id and vram_gb, got {describe(entry)}")
            continue
        sec = Section(problems, path, entry, keys_of(GpuSpec))
        if not sec.has("id") or not sec.has("vram_gb"):
            problems.add(path, "needs both id and vram_gb")
            continue
        gpu_id = read_int(problems, sec.at("id"), sec.raw("id"), minimum=0)
        vram = read_number(
            problems, sec.at("vram_gb"), sec.raw("vram_gb"), minimum=0, exclusive=True
        )
        if gpu_id is not None and gpu_id in seen:
            problems.add(sec.at("id"), f"GPU {gpu_id} is listed twice")
        elif gpu_id is not None and vram is not None:
            seen.add(gpu_id)
            gpus.append(GpuSpec(id=gpu_id, vram_gb=vram))
    return tuple(gpus)


def read_host_memory(problems: Problems, top: Section) -> float | Literal["auto"]:
    base = BASE.host_memory_gb
    raw = top.raw("host_memory_gb")
    if not top.has("host_memory_gb") or raw == "auto":
        return base
    if isinstance(raw, str):
        problems.add("host_memory_gb", f"expected auto or a number > 0, got {describe(raw)}")
        return base
    found = read_number(problems, "host_memory_gb", raw, minimum=0, exclusive=True)
    return base if found is None else found


def read_ray(problems: Problems, raw: object) -> RayConfig:
    sec = Section(problems, "ray", raw, keys_of(RayConfig))
    base = RayConfig()
    address = sec.get_str("address", base.address, no_whitespace=True)
    if address != "auto" and not _is_ray_url(address):
        problems.add(sec.at("address"), f"expected auto or ray://host:port, got {describe(address)}")
        address = base.address
    vram = sec.raw("gpu_vram_gb")
    return RayConfig(
        address=address,
        namespace=sec.get_str("namespace", base.namespace, no_whitespace=True),
        gpu_vram_gb=None if vram is None else read_number(
            problems, sec.at("gpu_vram_gb"), vram, minimum=0, exclusive=True),
    )


def _is_ray_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "ray" and bool(parts.hostname) and port is not None
            and 1 <= port <= 65535 and parts.path in ("", "/") and not parts.query
            and not parts.fragment and "@" not in parts.netloc)


def read_retry(problems: Problems, raw: object, env: EnvSettings) -> RetryConfig:
    sec = Section(problems, "retry", raw, keys_of(RetryConfig))
    base = RetryConfig()
    return RetryConfig(
        max_retries=pick(env.max_retries, sec.get_int("max_retries", base.max_retries, minimum=0)),
        delay_s=pick(env.retry_delay_s, sec.get_number("delay_s", base.delay_s, minimum=0)),
        backoff=pick(env.retry_backoff, sec.get_number("backoff", base.backoff, minimum=1)),
    )


def read_faults(problems: Problems, raw: object) -> FaultConfig:
    sec = Section(problems, "faults", raw, keys_of(FaultConfig))
    base = FaultConfig()
    faults = FaultConfig(
        start_backoff_s=sec.get_number("start_backoff_s", base.start_backoff_s, minimum=0),
        start_backoff_max_s=sec.get_number(
            "start_backoff_max_s", base.start_backoff_max_s, minimum=0
        ),
        max_failed_starts=sec.get_int("max_failed_starts", base.max_failed_starts, minimum=1),
        health_interval_s=sec.get_number(
            "health_interval_s", base.health_interval_s, minimum=0, exclusive=True
        ),
        unhealthy_probes=sec.get_int("unhealthy_probes", base.unhealthy_probes, minimum=1),
        stop_grace_s=sec.get_number("stop_grace_s", base.stop_grace_s, minimum=0),
    )
    if faults.start_backoff_max_s < faults.start_backoff_s:
        problems.add(
            "faults.start_backoff_max_s",
            f"must be >= faults.start_backoff_s ({faults.start_backoff_s:g}), "
            f"got {faults.start_backoff_max_s:g}",
        )
    return faults


def read_log_level_key(problems: Problems, top: Section, env: EnvSettings) -> str:
    from_file = BASE.log_level
    if top.has("log_level"):
        from_file = read_log_level(problems, "log_level", top.raw("log_level")) or from_file
    return env.log_level or from_file


def read_log_format(problems: Problems, top: Section, argument: str | None) -> LogFormat:
    chosen = top.get_choice("log_format", BASE.log_format, LOG_FORMATS)
    if argument is not None:
        if argument in LOG_FORMATS:
            chosen = argument
        else:
            allowed = " or ".join(map(repr, LOG_FORMATS))
            problems.add("--log-format", f"expected {allowed}, got {describe(argument)}")
    return "json" if chosen == "json" else "text"


def read_prefix(problems: Problems, top: Section, env: EnvSettings) -> str:
    from_file = BASE.container_prefix
    if top.has("container_prefix"):
        found = read_container_prefix(problems, "container_prefix", top.raw("container_prefix"))
        from_file = found or from_file
    return env.container_prefix or from_file
