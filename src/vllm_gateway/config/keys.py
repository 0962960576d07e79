"""Every per-model key: how its value is read and where it may be written.

One table serves both ``models.<name>`` and ``defaults``: a key marked
``in_defaults`` may be set once for every model there. Each reader records a
``"key.path: message"`` problem and returns None for a value it refuses, so a
key's value is either checked and typed or absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from .schema import LauncherKind, NetworkMode, Replicas, SleepLevel
from .sizes import parse_size
from .values import (
    Problems,
    Section,
    describe,
    join,
    read_argv,
    read_bool,
    read_int,
    read_number,
    read_str,
    read_str_list,
    read_str_map,
)

Reader = Callable[[Problems, str, object], object]
# What a key configures: the model itself, its container, or nothing kept as is.
Target = Literal["model", "docker"]

LAUNCHERS: Final = get_args(LauncherKind)
NETWORKS: Final = get_args(NetworkMode)
SLEEP_LEVELS: Final = get_args(SleepLevel)  # 0 is off
IPC_MODES: Final = ("host", "private", "shareable", "none")
# vLLM's --max-lora-rank accepts only these.
LORA_RANKS: Final = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class Key:
    read: Reader
    target: Target = "model"
    in_defaults: bool = True
    # Meaningful only for a server the gateway starts (refused with url).
    starting: bool = True


def number(minimum: float, *, exclusive: bool = False) -> Reader:
    return lambda p, path, v: read_number(p, path, v, minimum=minimum, exclusive=exclusive)


def integer(minimum: int, maximum: int | None = None) -> Reader:
    return lambda p, path, v: read_int(p, path, v, minimum=minimum, maximum=maximum)


def choice(*choices: str) -> Reader:
    def read(problems: Problems, path: str, value: object) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        if len(choices) > 2:
            allowed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
        else:
            allowed = " or ".join(map(repr, choices))
        problems.add(path, f"expected {allowed}, got {describe(value)}")
        return None

    return read


def _word(problems: Problems, path: str, value: object) -> str | None:
    return read_str(problems, path, value, no_whitespace=True)


def _health_path(problems: Problems, path: str, value: object) -> str | None:
    text = _word(problems, path, value)
    if text is not None and not text.startswith("/"):
        problems.add(path, f"must start with '/', got {describe(text)}")
        return None
    return text


def _env(problems: Problems, path: str, value: object) -> dict[str, str] | None:
    return read_str_map(problems, path, value)


def _args(problems: Problems, path: str, value: object) -> tuple[str, ...] | None:
    return read_argv(problems, path, value, allow_empty=True)


def _command(problems: Problems, path: str, value: object) -> tuple[str, ...] | None:
    return read_argv(problems, path, value)


def _aliases(problems: Problems, path: str, value: object) -> tuple[str, ...] | None:
    return read_str_list(problems, path, value, no_whitespace=True)


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


def _vram(problems: Problems, path: str, value: object) -> float | str | None:
    # Leaving vram_gb out means "no GPU accounting"; an explicit 0 is a slip.
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        problems.add(path, f"expected a number > 0, got {describe(value)} (or auto, to measure it)")
        return None
    return read_number(problems, path, value, minimum=0, exclusive=True)


def _volumes(problems: Problems, path: str, value: object) -> tuple[str, ...] | None:
    volumes = read_str_list(problems, path, value)
    if volumes is None:
        return None
    ok = True
    for index, volume in enumerate(volumes):
        parts = volume.split(":")
        if not 2 <= len(parts) <= 3 or not all(parts):
            problems.add(f"{path}[{index}]", f"expected host:container[:mode], got {describe(volume)}")
            ok = False
    return volumes if ok else None


def _shm_size(problems: Problems, path: str, value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str):
        try:
            parse_size(value)
        except ValueError:
            pass
        else:
            return value
    problems.add(path, f"expected a size like 8g or 512m, got {describe(value)}")
    return None


def _ipc(problems: Problems, path: str, value: object) -> str | None:
    if isinstance(value, str) and (
        value in IPC_MODES or (value.startswith("container:") and len(value) > 10)
    ):
        return value
    problems.add(
        path, f"expected host, private, shareable, none or container:NAME, got {describe(value)}"
    )
    return None


def _sleep(problems: Problems, path: str, value: object) -> int | None:
    # YAML 1.1 reads a bare `off` as false.
    if value is False or value == "off" or (type(value) is int and value == 0):
        return 0
    if type(value) is int and value in SLEEP_LEVELS:
        return value
    levels = [str(level) for level in SLEEP_LEVELS if level]
    problems.add(path, f"expected off, {' or '.join(levels)}, got {describe(value)}")
    return None


def _replicas(problems: Problems, path: str, value: object) -> Replicas | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping like {{min: 0, max: 2}}, got {describe(value)}")
        return None
    sec = Section(problems, path, value, ("min", "max"))
    base = Replicas()
    low = sec.get_int("min", base.min, minimum=0)
    high = sec.get_int("max", base.max, minimum=1)
    if low > high:
        problems.add(sec.at("min"), f"must be <= {sec.at('max')} ({high}), got {low}")
        return None
    return Replicas(min=low, max=high)


def _gpu_ids(problems: Problems, path: str, value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not value:
        problems.add(path, f"expected a list of GPU ids like [0, 1], got {describe(value)}")
        return None
    ids: list[int] = []
    for index, item in enumerate(value):
        found = read_int(problems, f"{path}[{index}]", item, minimum=0)
        if found is None:
            return None
        if found in ids:
            problems.add(path, f"GPU {found} is listed twice")
            return None
        ids.append(found)
    return tuple(ids)


def _lora_rank(problems: Problems, path: str, value: object) -> int | None:
    if type(value) is int and value in LORA_RANKS:
        return value
    problems.add(
        path, f"expected one of {', '.join(map(str, LORA_RANKS))} (vLLM's choices), "
        f"got {describe(value)}"
    )
    return None


@dataclass(frozen=True)
class RawAdapter:
    path: str
    aliases: tuple[str, ...] = ()


def _adapters(problems: Problems, path: str, value: object) -> dict[str, RawAdapter] | None:
    if not isinstance(value, dict) or not value:
        problems.add(
            path, f"expected a mapping of adapter names to paths or {{path, aliases}}, "
            f"got {describe(value)}"
        )
        return None
    found: dict[str, RawAdapter] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
            problems.add(path, f"adapter name {describe(name)} must be a string without whitespace")
            continue
        where = join(path, name)
        if not isinstance(entry, dict):
            adapter_path = read_str(problems, where, entry)
            if adapter_path is not None:
                found[name] = RawAdapter(adapter_path)
            continue
        sec = Section(problems, where, entry, ("path", "aliases"))
        if not sec.has("path"):
            problems.add(where, "needs path")
            continue
        adapter_path = read_str(problems, sec.at("path"), sec.raw("path"))
        aliases = _aliases(problems, sec.at("aliases"), sec.raw("aliases")) if sec.has(
            "aliases") else ()
        if adapter_path is not None and aliases is not None:
            found[name] = RawAdapter(adapter_path, aliases)
    return found


def _label(problems: Problems, path: str, value: object) -> str | None:
    # A node id or IP written unquoted may come as a number.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return _word(problems, path, value)


SECONDS: Final = number(0)
KEYS: Final[dict[str, Key]] = {
    "command": Key(_command, in_defaults=False),
    "url": Key(read_url, in_defaults=False, starting=False),
    "launcher": Key(choice(*LAUNCHERS)),
    "vram_gb": Key(_vram, in_defaults=False),
    "vram_gb_estimate": Key(number(0, exclusive=True), in_defaults=False),
    "gpu_count": Key(integer(1)),
    "aliases": Key(_aliases, in_defaults=False, starting=False),
    "env": Key(_env),
    "health_path": Key(_health_path, starting=False),
    "pinned": Key(read_bool, in_defaults=False),
    "forward_authorization": Key(read_bool, starting=False),
    "max_concurrent": Key(integer(1), starting=False),
    "max_queue": Key(integer(0), starting=False),
    "idle_timeout_s": Key(SECONDS),
    "startup_timeout_s": Key(SECONDS),
    "request_timeout_s": Key(SECONDS, starting=False),
    "image": Key(_word, target="docker"),
    "args": Key(_args, target="docker"),
    "volumes": Key(_volumes, target="docker"),
    "shm_size": Key(_shm_size, target="docker"),
    "ipc": Key(_ipc, target="docker"),
    "network": Key(choice(*NETWORKS), target="docker"),
    "container_port": Key(integer(1, 65535), target="docker"),
    "sleep": Key(_sleep),
    "sleep_vram_gb": Key(number(0)),
    "weights_gb": Key(number(0), in_defaults=False),
    "sleep_timeout_s": Key(SECONDS),
    "wake_check": Key(read_bool),
    "swap_patience_s": Key(SECONDS),
    "replicas": Key(_replicas),
    "scale_up_after_s": Key(SECONDS),
    "gpu_ids": Key(_gpu_ids),
    "node": Key(_label),
    "default": Key(read_bool, in_defaults=False),
    "restore_after_s": Key(SECONDS),
    "adapters": Key(_adapters, in_defaults=False),
    "max_adapters": Key(integer(1)),
    "max_lora_rank": Key(_lora_rank),
}
MODEL_KEYS: Final = tuple(KEYS)
DEFAULT_KEYS: Final = tuple(key for key, spec in KEYS.items() if spec.in_defaults)
DOCKER_KEYS: Final = tuple(key for key, spec in KEYS.items() if spec.target == "docker")
