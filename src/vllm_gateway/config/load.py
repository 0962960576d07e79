"""Loading and checking a gateway configuration file.

Precedence, highest first: an explicit argument (host, port, log_format) >
an environment variable > the file's ``defaults`` section or top-level keys >
the built-in default. A model's own setting in the file beats both the
environment and ``defaults`` for that model.

Every problem is collected with the key path (``models.x.vram_gb``) or the
variable (``GATEWAY_MAX_CONCURRENT``) it concerns and raised together as one
:class:`ConfigError`, so a user's mistake never ends in a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

from .config import (
    FaultConfig,
    GatewayConfig,
    GpuSpec,
    ModelConfig,
    RayConfig,
    RetryConfig,
    ServerConfig,
)
from .config_auth import read_auth, resolve_base_dir
from .config_checks import check_defaults, check_fit, check_names, check_ray
from .config_env import EnvSettings, read_container_prefix, read_env, read_log_level
from .config_models import read_defaults, read_models
from .config_values import Problems, Section, describe, read_int, read_number, read_str
from .config_yaml import parse_yaml

TOP_KEYS: Final = (
    "server",
    "gpus",
    "max_loaded_models",
    "defaults",
    "models",
    "retry",
    "faults",
    "auth",
    "http_pool_size",
    "state_dir",
    "log_level",
    "log_format",
    "container_prefix",
    "host_memory_gb",
    "ray",
)
SERVER_KEYS: Final = ("host", "port", "shutdown_timeout_s", "max_body_mb")
RETRY_KEYS: Final = ("max_retries", "delay_s", "backoff")
FAULT_KEYS: Final = (
    "start_backoff_s",
    "start_backoff_max_s",
    "max_failed_starts",
    "health_interval_s",
    "unhealthy_probes",
    "stop_grace_s",
)
GPU_KEYS: Final = ("id", "vram_gb")
RAY_KEYS: Final = ("address", "namespace", "gpu_vram_gb")
LOG_FORMATS: Final = ("text", "json")

T = TypeVar("T")


class ConfigError(Exception):
    """Everything wrong with a configuration, one ``"where: what"`` line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    log_format: str | None = None,
    text: str | None = None,
) -> GatewayConfig:
    """Read, check and build the configuration.

    With ``text`` the YAML comes from that string; ``path`` then only names it in
    messages and anchors relative ``key_file`` paths (it may be None).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    label = "config" if path is None else os.fspath(path)
    if text is None:
        if path is None:
            raise ConfigError(["config: no configuration file given"])
        text = _read_file(label)
    try:
        raw = parse_yaml(text)
    except ValueError as error:
        raise ConfigError([f"{label}: {error}"]) from None
    if raw is None:
        raise ConfigError([f"{label}: empty configuration (no settings found)"])
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{label}: expected a mapping of settings at the top level, got {describe(raw)}"]
        )
    problems = Problems()
    config = _build(problems, raw, environ, path, host=host, port=port, log_format=log_format)
    if problems.errors:
        raise ConfigError(problems.errors)
    return config


def _read_file(label: str) -> str:
    try:
        with open(label, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError([f"{label}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a directory, not a file"]) from None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ConfigError([f"{label}: cannot read ({reason})"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{label}: not UTF-8 text (byte {error.start})"]) from None


def _build(
    problems: Problems,
    raw: dict[object, object],
    env: Mapping[str, str],
    path: str | os.PathLike[str] | None,
    *,
    host: str | None,
    port: int | None,
    log_format: str | None,
) -> GatewayConfig:
    top = Section(problems, "", raw, TOP_KEYS)
    settings = read_env(env, problems)
    inherited = read_defaults(problems, top.raw("defaults"), settings)
    read = read_models(problems, top.raw("models"), inherited)
    all_models = read.models
    check_names(problems, read)
    gpus = _gpus(problems, top.raw("gpus"), settings)
    check_fit(problems, read, gpus)
    check_ray(problems, read, gpus)
    check_defaults(problems, read)
    models = _allowed(problems, all_models, settings.allowed_models)
    max_loaded = _pick(
        settings.max_loaded_models, top.get_optional_int("max_loaded_models", minimum=1)
    )
    _check_pinned_fit(problems, models, max_loaded)
    return GatewayConfig(
        server=_server(problems, top.raw("server"), host, port),
        gpus=gpus,
        max_loaded_models=max_loaded,
        models=models,
        retry=_retry(problems, top.raw("retry"), settings),
        faults=_faults(problems, top.raw("faults")),
        auth=read_auth(problems, top.raw("auth"), env, resolve_base_dir(path), all_models),
        http_pool_size=_pick(
            settings.http_pool_size, top.get_optional_int("http_pool_size", minimum=1)
        ),
        log_level=_log_level(problems, top, settings),
        log_format=_log_format(problems, top, log_format),
        container_prefix=_container_prefix(problems, top, settings),
        state_dir=top.get_optional_str("state_dir"),
        host_memory_gb=_host_memory(problems, top),
        ray=_ray(problems, top.raw("ray")),
    )


def _check_pinned_fit(
    problems: Problems, models: Mapping[str, ModelConfig], max_loaded: int | None
) -> None:
    """Pinned models are never stopped, so they must all fit under max_loaded_models."""
    pinned = [name for name, model in models.items() if model.pinned and model.managed]
    if max_loaded is not None and len(pinned) > max_loaded:
        problems.add("max_loaded_models", f"{max_loaded} is less than the {len(pinned)} pinned "
                     f"models ({', '.join(pinned)}), which are never stopped")


def _pick(override: T | None, fallback: T) -> T:
    return fallback if override is None else override


def _server(problems: Problems, raw: object, host: str | None, port: int | None) -> ServerConfig:
    sec = Section(problems, "server", raw, SERVER_KEYS)
    base = ServerConfig()
    chosen_host = sec.get_str("host", base.host, no_whitespace=True)
    if host is not None:
        chosen_host = read_str(problems, "--host", host, no_whitespace=True) or chosen_host
    chosen_port = sec.get_int("port", base.port, minimum=0, maximum=65535)
    if port is not None:
        chosen_port = _pick(
            read_int(problems, "--port", port, minimum=0, maximum=65535), chosen_port
        )
    return ServerConfig(
        host=chosen_host,
        port=chosen_port,
        shutdown_timeout_s=sec.get_number("shutdown_timeout_s", base.shutdown_timeout_s, minimum=0),
        max_body_mb=sec.get_number("max_body_mb", base.max_body_mb, minimum=0, exclusive=True),
    )


def _gpus(
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
        sec = Section(problems, path, entry, GPU_KEYS)
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


def _host_memory(problems: Problems, top: Section) -> float | Literal["auto"]:
    base = GatewayConfig().host_memory_gb
    raw = top.raw("host_memory_gb")
    if not top.has("host_memory_gb") or raw == "auto":
        return base
    if isinstance(raw, str):
        problems.add("host_memory_gb", f"expected auto or a number > 0, got {describe(raw)}")
        return base
    found = read_number(problems, "host_memory_gb", raw, minimum=0, exclusive=True)
    return base if found is None else found


def _ray(problems: Problems, raw: object) -> RayConfig:
    sec = Section(problems, "ray", raw, RAY_KEYS)
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


def _allowed(
    problems: Problems, models: dict[str, ModelConfig], allowed: tuple[str, ...] | None
) -> dict[str, ModelConfig]:
    if allowed is None:
        return models
    aliases = {alias: model.name for model in models.values() for alias in model.aliases}
    adapters = {name: model.name for model in models.values() for name in model.adapters}
    for name in allowed:
        if name in adapters:
            problems.add(
                "ALLOWED_MODELS",
                f"{name!r} is an adapter; list its base model {adapters[name]!r} instead",
            )
        elif name in aliases:
            problems.add(
                "ALLOWED_MODELS",
                f"{name!r} is an alias; list the model name {aliases[name]!r} instead",
            )
        elif name not in models:
            known = ", ".join(models) or "none"
            problems.add("ALLOWED_MODELS", f"{name!r} is not a configured model (known: {known})")
    return {name: model for name, model in models.items() if name in allowed}


def _retry(problems: Problems, raw: object, env: EnvSettings) -> RetryConfig:
    sec = Section(problems, "retry", raw, RETRY_KEYS)
    base = RetryConfig()
    return RetryConfig(
        max_retries=_pick(env.max_retries, sec.get_int("max_retries", base.max_retries, minimum=0)),
        delay_s=_pick(env.retry_delay_s, sec.get_number("delay_s", base.delay_s, minimum=0)),
        backoff=_pick(env.retry_backoff, sec.get_number("backoff", base.backoff, minimum=1)),
    )


def _faults(problems: Problems, raw: object) -> FaultConfig:
    sec = Section(problems, "faults", raw, FAULT_KEYS)
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


def _log_level(problems: Problems, top: Section, env: EnvSettings) -> str:
    from_file = "INFO"
    if top.has("log_level"):
        from_file = read_log_level(problems, "log_level", top.raw("log_level")) or from_file
    return env.log_level or from_file


def _log_format(problems: Problems, top: Section, argument: str | None) -> Literal["text", "json"]:
    chosen = top.get_choice("log_format", "text", LOG_FORMATS)
    if argument is not None:
        if argument in LOG_FORMATS:
            chosen = argument
        else:
            problems.add("--log-format", f"expected 'text' or 'json', got {describe(argument)}")
    return "json" if chosen == "json" else "text"


def _container_prefix(problems: Problems, top: Section, env: EnvSettings) -> str:
    from_file = "vllm"
    if top.has("container_prefix"):
        found = read_container_prefix(problems, "container_prefix", top.raw("container_prefix"))
        from_file = found or from_file
    return env.container_prefix or from_file


def check_config_main(path: str, env: Mapping[str, str]) -> tuple[int, str]:
    """``vllm-gateway check-config FILE``: exit code 0 and a summary, or 2 and the errors."""
    try:
        config = load_config(path, env)
    except ConfigError as error:
        return 2, str(error)
    count = len(config.models)
    names = ", ".join(config.models)
    lines = [f"OK: {count} model{'s' if count != 1 else ''} ({names})"]
    if config.gpus == "auto":
        lines.append("note: gpus: auto; model sizes are checked against the GPUs at start")
    return 0, "\n".join(lines)
