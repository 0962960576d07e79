"""The ``models`` section: one :class:`ModelConfig` per entry, defaults applied.

A model is reached in exactly one way: a ``command`` the gateway starts, a
``url`` of a server that already runs, or ``launcher: docker`` with an
``image``. Keys that the chosen way would silently ignore are errors, so a
typo in intent shows up at check time rather than as a mystery at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit

from .config import DockerSpec, GpuSpec, LauncherKind, ModelConfig
from .config_values import (
    Problems,
    Section,
    describe,
    fmt_number,
    join,
    read_argv,
    read_number,
    read_str,
    read_str_list,
    read_str_map,
)

DEFAULT_KEYS: Final = (
    "max_concurrent",
    "max_queue",
    "idle_timeout_s",
    "startup_timeout_s",
    "request_timeout_s",
    "launcher",
)
DOCKER_KEYS: Final = ("image", "args", "volumes", "shm_size", "ipc", "network", "container_port")
# Keys about starting and placing a server; meaningless for a model given by url.
STARTING_KEYS: Final = (
    "command",
    "launcher",
    *DOCKER_KEYS,
    "env",
    "vram_gb",
    "gpu_count",
    "pinned",
    "idle_timeout_s",
    "startup_timeout_s",
)
MODEL_KEYS: Final = (
    "command",
    "url",
    "vram_gb",
    "gpu_count",
    "aliases",
    "env",
    "health_path",
    "pinned",
    "forward_authorization",
    *DEFAULT_KEYS,
    *DOCKER_KEYS,
)
_SHM_SIZE_RE: Final = re.compile(r"[0-9]+(\.[0-9]+)? ?[kmgtp]?i?b?", re.IGNORECASE)
_IPC_MODES: Final = ("host", "private", "shareable", "none")


@dataclass(frozen=True)
class ModelDefaults:
    """What a model gets for the keys it does not set itself."""

    max_concurrent: int = 50
    max_queue: int = 200
    idle_timeout_s: float = 1800.0
    startup_timeout_s: float = 1800.0
    request_timeout_s: float = 600.0
    launcher: LauncherKind = "subprocess"


def _launcher(value: str) -> LauncherKind:
    return "docker" if value == "docker" else "subprocess"


def read_defaults(problems: Problems, raw: object) -> ModelDefaults:
    """The file's ``defaults`` section alone; environment overrides come later."""
    sec = Section(problems, "defaults", raw, DEFAULT_KEYS)
    base = ModelDefaults()
    return ModelDefaults(
        max_concurrent=sec.get_int("max_concurrent", base.max_concurrent, minimum=1),
        max_queue=sec.get_int("max_queue", base.max_queue, minimum=0),
        idle_timeout_s=sec.get_number("idle_timeout_s", base.idle_timeout_s, minimum=0),
        startup_timeout_s=sec.get_number("startup_timeout_s", base.startup_timeout_s, minimum=0),
        request_timeout_s=sec.get_number("request_timeout_s", base.request_timeout_s, minimum=0),
        launcher=_launcher(sec.get_choice("launcher", base.launcher, ("subprocess", "docker"))),
    )


def read_models(problems: Problems, raw: object, defaults: ModelDefaults) -> dict[str, ModelConfig]:
    if raw is None:
        problems.add("models", "at least one model is required")
        return {}
    if not isinstance(raw, dict):
        problems.add(
            "models", f"expected a mapping of model names to settings, got {describe(raw)}"
        )
        return {}
    if not raw:
        problems.add("models", "at least one model is required")
    models: dict[str, ModelConfig] = {}
    for name, settings in raw.items():
        if _check_name(problems, name) and isinstance(name, str):
            model = _read_model(problems, name, settings, defaults)
            if model is not None:
                models[name] = model
    return models


def _check_name(problems: Problems, name: object) -> bool:
    if not isinstance(name, str):
        problems.add(join("models", name), "a model name must be a string (quote it)")
        return False
    if not name.strip():
        problems.add("models", "a model name must not be empty")
        return False
    if any(ch.isspace() for ch in name):
        problems.add("models", f"model name {describe(name)} must not contain whitespace")
        return False
    return True


def _read_model(
    problems: Problems, name: str, raw: object, defaults: ModelDefaults
) -> ModelConfig | None:
    path = join("models", name)
    if not isinstance(raw, dict):
        problems.add(path, f"expected a mapping of settings, got {describe(raw)}")
        return None
    sec = Section(problems, path, raw, MODEL_KEYS)
    base = ModelConfig(
        name=name,
        aliases=_aliases(sec),
        health_path=_health_path(sec),
        forward_authorization=sec.get_bool("forward_authorization", False),
        max_concurrent=sec.get_int("max_concurrent", defaults.max_concurrent, minimum=1),
        max_queue=sec.get_int("max_queue", defaults.max_queue, minimum=0),
        request_timeout_s=sec.get_number(
            "request_timeout_s", defaults.request_timeout_s, minimum=0
        ),
    )
    ways = [key for key in ("command", "url", "image") if sec.has(key)]
    if len(ways) > 1:
        problems.add(path, f"give only one of command, url or image, got {' and '.join(ways)}")
        return None
    if ways == ["url"]:
        return _remote(sec, base)
    return _managed(sec, base, defaults)


def _aliases(sec: Section) -> tuple[str, ...]:
    if not sec.has("aliases"):
        return ()
    found = read_str_list(sec.problems, sec.at("aliases"), sec.raw("aliases"), no_whitespace=True)
    return found or ()


def _health_path(sec: Section) -> str:
    value = sec.get_str("health_path", "/health", no_whitespace=True)
    if not value.startswith("/"):
        sec.problems.add(sec.at("health_path"), f"must start with '/', got {describe(value)}")
    return value


def _remote(sec: Section, base: ModelConfig) -> ModelConfig:
    for key in STARTING_KEYS:
        if sec.has(key):
            sec.problems.add(
                sec.at(key), "not used with url (the gateway only routes to a running server)"
            )
    return replace(base, url=read_url(sec.problems, sec.at("url"), sec.raw("url")))


def read_url(problems: Problems, path: str, value: object) -> str | None:
    text = read_str(problems, path, value, no_whitespace=True)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or not 1 <= port <= 65535
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        problems.add(path, f"expected http(s)://host:port, got {describe(value)}")
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _managed(sec: Section, base: ModelConfig, defaults: ModelDefaults) -> ModelConfig | None:
    problems = sec.problems
    launcher = _launcher(sec.get_choice("launcher", defaults.launcher, ("subprocess", "docker")))
    origin = "" if sec.has("launcher") else " (from defaults.launcher)"
    vram_gb = 0.0
    if sec.has("vram_gb"):
        # Leaving vram_gb out means "no GPU accounting"; an explicit 0 is a slip.
        vram_gb = (
            read_number(problems, sec.at("vram_gb"), sec.raw("vram_gb"), minimum=0, exclusive=True)
            or 0.0
        )
    env: dict[str, str] = {}
    if sec.has("env"):
        env = read_str_map(problems, sec.at("env"), sec.raw("env")) or {}
    model = replace(
        base,
        launcher=launcher,
        vram_gb=vram_gb,
        gpu_count=sec.get_int("gpu_count", 1, minimum=1),
        env=env,
        pinned=sec.get_bool("pinned", False),
        idle_timeout_s=sec.get_number("idle_timeout_s", defaults.idle_timeout_s, minimum=0),
        startup_timeout_s=sec.get_number(
            "startup_timeout_s", defaults.startup_timeout_s, minimum=0
        ),
    )
    if launcher == "subprocess":
        for key in DOCKER_KEYS:
            if sec.has(key):
                problems.add(
                    sec.at(key),
                    f"only used with launcher: docker (this model's launcher is "
                    f"subprocess{origin})",
                )
        if not sec.has("command"):
            problems.add(
                sec.path,
                "needs command (a server to start), url (a server already running) "
                "or launcher: docker with image",
            )
            return None
        return replace(model, command=read_argv(problems, sec.at("command"), sec.raw("command")))
    if sec.has("command"):
        problems.add(
            sec.at("command"),
            f"not used with launcher: docker{origin}; put the server's arguments in args",
        )
    if not sec.has("image"):
        problems.add(sec.path, f"launcher: docker{origin} needs image")
        return None
    return replace(model, docker=_docker(sec))


def _docker(sec: Section) -> DockerSpec:
    problems = sec.problems
    base = DockerSpec()
    args: tuple[str, ...] = ()
    if sec.has("args"):
        args = read_argv(problems, sec.at("args"), sec.raw("args"), allow_empty=True) or ()
    network = sec.get_choice("network", base.network, ("host", "bridge"))
    if sec.has("container_port") and network == "host":
        problems.add(sec.at("container_port"), "only used with network: bridge")
    return DockerSpec(
        image=sec.get_str("image", base.image, no_whitespace=True),
        args=args,
        volumes=_volumes(sec),
        shm_size=_shm_size(sec),
        ipc=_ipc(sec),
        network=network,
        container_port=sec.get_int("container_port", base.container_port, minimum=1, maximum=65535),
    )


def _volumes(sec: Section) -> tuple[str, ...]:
    if not sec.has("volumes"):
        return ()
    volumes = read_str_list(sec.problems, sec.at("volumes"), sec.raw("volumes")) or ()
    for index, volume in enumerate(volumes):
        parts = volume.split(":")
        if not 2 <= len(parts) <= 3 or not all(parts):
            sec.problems.add(
                f"{sec.at('volumes')}[{index}]",
                f"expected host:container[:mode], got {describe(volume)}",
            )
    return volumes


def _shm_size(sec: Section) -> str | None:
    value = sec.raw("shm_size")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _SHM_SIZE_RE.fullmatch(value):
        return value
    sec.problems.add(sec.at("shm_size"), f"expected a size like 8g or 512m, got {describe(value)}")
    return None


def _ipc(sec: Section) -> str | None:
    value = sec.raw("ipc")
    if value is None:
        return None
    if isinstance(value, str) and (
        value in _IPC_MODES or (value.startswith("container:") and len(value) > 10)
    ):
        return value
    sec.problems.add(
        sec.at("ipc"),
        f"expected host, private, shareable, none or container:NAME, got {describe(value)}",
    )
    return None


def check_aliases(problems: Problems, models: Mapping[str, ModelConfig]) -> None:
    """Every name a request may use must lead to exactly one model."""
    owner: dict[str, str] = {}
    for model in models.values():
        where = join(join("models", model.name), "aliases")
        for alias in model.aliases:
            if alias == model.name:
                problems.add(where, f"{alias!r} is the model's own name")
            elif alias in models:
                problems.add(where, f"{alias!r} is the name of another model")
            elif owner.get(alias) == model.name:
                problems.add(where, f"{alias!r} is listed twice")
            elif alias in owner:
                problems.add(where, f"{alias!r} is already an alias of models.{owner[alias]}")
            else:
                owner[alias] = model.name


def check_fit(
    problems: Problems, models: Mapping[str, ModelConfig], gpus: tuple[GpuSpec, ...]
) -> None:
    """A model that could never be placed on the declared GPUs is a config error.

    ``vram_gb`` is what the model needs on each of its ``gpu_count`` GPUs.
    """
    if not gpus:
        return
    largest = max(gpu.vram_gb for gpu in gpus)
    for model in models.values():
        if not model.managed:
            continue
        path = join("models", model.name)
        if model.gpu_count > len(gpus):
            verb = "is" if len(gpus) == 1 else "are"
            problems.add(
                join(path, "gpu_count"),
                f"needs {model.gpu_count} GPUs but only {len(gpus)} {verb} declared",
            )
            continue
        if model.vram_gb <= 0:
            continue
        fitting = sum(1 for gpu in gpus if gpu.vram_gb >= model.vram_gb)
        size = fmt_number(model.vram_gb)
        if fitting == 0:
            problems.add(
                join(path, "vram_gb"),
                f"{size} GB does not fit on any GPU (largest: {fmt_number(largest)} GB)",
            )
        elif fitting < model.gpu_count:
            problems.add(
                join(path, "vram_gb"),
                f"{size} GB fits on only {fitting} GPU(s) but gpu_count is {model.gpu_count}",
            )
