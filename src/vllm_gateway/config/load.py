"""Loading and checking a gateway configuration file.

Precedence, highest first: an explicit argument (host, port, log_format) >
an environment variable > the file's ``defaults`` section or top-level keys >
the built-in default (the dataclass field's). A model's own setting in the file
beats both the environment and ``defaults`` for that model.

Every problem is collected with the key path (``models.x.vram_gb``) or the
variable (``GATEWAY_MAX_CONCURRENT``) it concerns and raised together as one
:class:`ConfigError`, so a user's mistake never ends in a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .auth import read_auth, resolve_base_dir
from .checks import check_defaults, check_fit, check_names, check_ray
from .document import parse_yaml, read_text
from .env import read_env
from .errors import ConfigError
from .models import read_defaults, read_models
from .schema import GatewayConfig, ModelConfig, NameIndex
from .sections import (
    TOP_KEYS,
    pick,
    read_faults,
    read_gpus,
    read_host_memory,
    read_log_format,
    read_log_level_key,
    read_prefix,
    read_ray,
    read_retry,
    read_server,
)
from .values import Problems, Section, describe


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
        text = read_text(label)
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
    gpus = read_gpus(problems, top.raw("gpus"), settings)
    check_fit(problems, read, gpus)
    check_ray(problems, read, gpus)
    check_defaults(problems, read)
    models = _allowed(problems, all_models, settings.allowed_models)
    max_loaded = pick(
        settings.max_loaded_models, top.get_optional_int("max_loaded_models", minimum=1)
    )
    _check_pinned_fit(problems, models, max_loaded)
    return GatewayConfig(
        server=read_server(problems, top.raw("server"), host, port),
        gpus=gpus,
        max_loaded_models=max_loaded,
        models=models,
        retry=read_retry(problems, top.raw("retry"), settings),
        faults=read_faults(problems, top.raw("faults")),
        auth=read_auth(
            problems, top.raw("auth"), env, resolve_base_dir(path), NameIndex.of(all_models)
        ),
        http_pool_size=pick(
            settings.http_pool_size, top.get_optional_int("http_pool_size", minimum=1)
        ),
        log_level=read_log_level_key(problems, top, settings),
        log_format=read_log_format(problems, top, log_format),
        container_prefix=read_prefix(problems, top, settings),
        state_dir=top.get_optional_str("state_dir"),
        host_memory_gb=read_host_memory(problems, top),
        ray=read_ray(problems, top.raw("ray")),
    )


def _check_pinned_fit(
    problems: Problems, models: Mapping[str, ModelConfig], max_loaded: int | None
) -> None:
    """Pinned models are never stopped, so they must all fit under max_loaded_models."""
    pinned = [name for name, model in models.items() if model.pinned and model.managed]
    if max_loaded is not None and len(pinned) > max_loaded:
        problems.add("max_loaded_models", f"{max_loaded} is less than the {len(pinned)} pinned "
                     f"models ({', '.join(pinned)}), which are never stopped")


def _allowed(
    problems: Problems, models: dict[str, ModelConfig], allowed: tuple[str, ...] | None
) -> dict[str, ModelConfig]:
    if allowed is None:
        return models
    index = NameIndex.of(models)
    for name in allowed:
        named = index.models.get(name)
        if name in index.adapters:
            base = index.adapters[name][0].name
            problems.add(
                "ALLOWED_MODELS", f"{name!r} is an adapter; list its base model {base!r} instead"
            )
        elif named is not None and named.name != name:
            problems.add(
                "ALLOWED_MODELS",
                f"{name!r} is an alias; list the model name {named.name!r} instead",
            )
        elif name not in models:
            known = ", ".join(models) or "none"
            problems.add("ALLOWED_MODELS", f"{name!r} is not a configured model (known: {known})")
    return {name: model for name, model in models.items() if name in allowed}
