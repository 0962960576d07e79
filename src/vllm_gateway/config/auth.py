"""The ``auth`` section: API keys whose secrets come from the environment or files.

A secret written into the YAML itself is refused: configuration files get
committed, copied into images and pasted into bug reports. Error messages
name the variable or the file, never the secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from .schema import AuthConfig, AuthKey, NameIndex
from .values import Problems, Section, describe, read_str, read_str_list

AUTH_KEYS: Final = ("protect_status", "keys")
# "key" is known so that it gets its own message instead of a did-you-mean.
KEY_KEYS: Final = ("name", "key_env", "key_file", "models", "admin", "rate_limit_per_min", "key")
# A key file holds one line; anything bigger is the wrong file (or a device).
MAX_KEY_FILE_BYTES: Final = 64 * 1024
_KEY_DEFAULTS: Final = AuthKey(name="", key="")


def read_auth(
    problems: Problems,
    raw: object,
    env: Mapping[str, str],
    base_dir: Path,
    models: NameIndex,
) -> AuthConfig | None:
    if raw is None:
        return None
    sec = Section(problems, "auth", raw, AUTH_KEYS)
    if not isinstance(raw, dict):
        return None
    protect_status = sec.get_bool("protect_status", AuthConfig().protect_status)
    entries = sec.raw("keys")
    if not isinstance(entries, list) or not entries:
        problems.add(
            sec.at("keys"),
            f"expected a list of at least one key (leave auth out to turn authentication off), "
            f"got {describe(entries)}",
        )
        return None
    keys: list[AuthKey] = []
    names: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for index, entry in enumerate(entries):
        path = f"auth.keys[{index}]"
        key = _read_key(problems, path, entry, env, base_dir, models)
        if key is None:
            continue
        if key.name in names:
            problems.add(f"{path}.name", f"{key.name!r} is already used by {names[key.name]}")
        elif key.key in secrets:
            # Two names for one secret would make it unclear who is calling.
            problems.add(path, f"has the same secret as {secrets[key.key]}")
        else:
            names[key.name] = path
            secrets[key.key] = path
            keys.append(key)
    return AuthConfig(keys=tuple(keys), protect_status=protect_status)


def _read_key(
    problems: Problems,
    path: str,
    raw: object,
    env: Mapping[str, str],
    base_dir: Path,
    index: NameIndex,
) -> AuthKey | None:
    if not isinstance(raw, dict):
        problems.add(
            path, f"expected a mapping with name and key_env or key_file, got {describe(raw)}"
        )
        return None
    sec = Section(problems, path, raw, KEY_KEYS)
    if sec.has("key"):
        problems.add(sec.at("key"), "secrets must come from key_env or key_file")
    name = read_str(problems, sec.at("name"), sec.raw("name"), no_whitespace=True)
    secret = _secret(sec, env, base_dir)
    allowed = _allowed_models(sec, index)
    admin = sec.get_bool("admin", _KEY_DEFAULTS.admin)
    rate = sec.get_optional_int("rate_limit_per_min", minimum=1)
    if name is None or secret is None or allowed is None:
        return None
    return AuthKey(name=name, key=secret, models=allowed, admin=admin, rate_limit_per_min=rate)


def _secret(sec: Section, env: Mapping[str, str], base_dir: Path) -> str | None:
    problems = sec.problems
    sources = [key for key in ("key_env", "key_file") if sec.has(key)]
    if len(sources) != 1:
        problems.add(sec.path, "needs exactly one of key_env or key_file")
        return None
    if sources == ["key_env"]:
        variable = read_str(problems, sec.at("key_env"), sec.raw("key_env"), no_whitespace=True)
        if variable is None:
            return None
        value = env.get(variable, "").strip()
        if not value:
            state = "is empty" if variable in env else "is not set"
            problems.add(variable, f"{state} (named by {sec.at('key_env')})")
            return None
        return value
    file_name = read_str(problems, sec.at("key_file"), sec.raw("key_file"))
    if file_name is None:
        return None
    return _read_key_file(problems, sec.at("key_file"), base_dir / file_name)


def _read_key_file(problems: Problems, where: str, path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        problems.add(where, f"cannot read {str(path)!r}: {error.strerror or error}")
        return None
    except ValueError as error:  # an embedded NUL byte in the name
        problems.add(where, f"cannot read {describe(str(path))}: {error}")
        return None
    if len(data) > MAX_KEY_FILE_BYTES:
        problems.add(
            where,
            f"{str(path)!r} is larger than {MAX_KEY_FILE_BYTES} bytes; "
            f"expected a file holding just the key",
        )
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        problems.add(where, f"{str(path)!r} is not UTF-8 text")
        return None
    if not text:
        problems.add(where, f"{str(path)!r} is empty")
        return None
    return text


def _allowed_models(sec: Section, index: NameIndex) -> tuple[str, ...] | Literal["*"] | None:
    """Model names a key may use; aliases are turned into the names they stand for."""
    raw = sec.raw("models")
    if not sec.has("models") or raw == "*":
        return "*"
    listed = read_str_list(sec.problems, sec.at("models"), raw)
    if listed is None:
        return None
    names: list[str] = []
    ok = True
    for entry in listed:
        model = index.models.get(entry)
        name = None if model is None else model.name
        if name is None:
            sec.problems.add(sec.at("models"), f"unknown model {entry!r}")
            ok = False
        elif name not in names:
            names.append(name)
    return tuple(names) if ok else None


def resolve_base_dir(config_path: str | os.PathLike[str] | None) -> Path:
    """Relative key_file paths are read next to the configuration file."""
    if config_path is None:
        return Path.cwd()
    return Path(os.fspath(config_path)).parent
