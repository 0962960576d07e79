"""Readers for raw YAML values that record problems instead of raising.

Configuration errors are collected, not thrown one at a time, so a user fixes
every mistake in one pass. Each reader takes the key path of the value, checks
its type and range, records ``"key.path: message"`` on failure and hands back
a usable fallback so the caller can carry on checking the rest of the file.
"""

from __future__ import annotations

import difflib
import math
import shlex
import string
from collections.abc import Sequence
from typing import Final

# What a command line or docker argument may refer to; the launcher fills
# them in with str.format, so literal braces are written {{ and }}.
PLACEHOLDERS: Final = (
    "port", "name", "gpu_ids", "gpu_memory_utilization", "max_loras", "max_lora_rank"
)


class Problems:
    """The errors found so far, in the order they were found."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, where: str, message: str) -> None:
        # A value inherited from defaults is checked once per model that uses it.
        line = f"{where}: {message}"
        if line not in self.errors:
            self.errors.append(line)


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def describe(value: object) -> str:
    """A value as the user wrote it in YAML, short enough for one error line."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


def fmt_number(value: float) -> str:
    return f"{value:g}"


def read_int(
    problems: Problems, path: str, value: object, *, minimum: int, maximum: int | None = None
) -> int | None:
    if maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    elif minimum == 1:
        expected = "a positive integer"
    else:
        expected = f"an integer >= {minimum}"
    number: int
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.add(path, f"expected {expected}, got {describe(value)}")
        return None
    if isinstance(value, float):
        if not value.is_integer():
            problems.add(path, f"expected {expected}, got {describe(value)}")
            return None
        number = int(value)
    else:
        number = value
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        problems.add(path, f"must be {bound}, got {number}")
        return None
    return number


def read_number(
    problems: Problems, path: str, value: object, *, minimum: float, exclusive: bool = False
) -> float | None:
    op = ">" if exclusive else ">="
    bound = f"{op} {fmt_number(minimum)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.add(path, f"expected a number {bound}, got {describe(value)}")
        return None
    number = float(value)
    if not math.isfinite(number):
        problems.add(path, f"expected a finite number {bound}, got {describe(value)}")
        return None
    if number < minimum or (exclusive and number == minimum):
        problems.add(path, f"must be {bound}, got {fmt_number(number)}")
        return None
    return number


def read_bool(problems: Problems, path: str, value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    problems.add(path, f"expected true or false, got {describe(value)}")
    return None


def read_str(
    problems: Problems, path: str, value: object, *, no_whitespace: bool = False
) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"expected a string, got {describe(value)}")
        return None
    if not value.strip():
        problems.add(path, "must not be empty")
        return None
    if no_whitespace and any(ch.isspace() for ch in value):
        problems.add(path, f"must not contain whitespace, got {describe(value)}")
        return None
    return value


def read_str_list(
    problems: Problems, path: str, value: object, *, no_whitespace: bool = False
) -> tuple[str, ...] | None:
    """A list of non-empty strings; a single string counts as a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        problems.add(path, f"expected a list of strings, got {describe(value)}")
        return None
    items: list[str] = []
    for index, item in enumerate(value):
        text = read_str(problems, f"{path}[{index}]", item, no_whitespace=no_whitespace)
        if text is not None:
            items.append(text)
    return tuple(items) if len(items) == len(value) else None


def _argument(value: object) -> str | None:
    # YAML turns `--max-model-len, 4096` into an int; such numbers are meant as text.
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def read_argv(
    problems: Problems, path: str, value: object, *, allow_empty: bool = False
) -> tuple[str, ...] | None:
    """A command line: a string split like a shell would (no shell runs) or a list."""
    argv: list[str] = []
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as error:
            problems.add(path, f"cannot split into arguments: {error}")
            return None
    elif isinstance(value, list):
        bad = False
        for index, item in enumerate(value):
            text = _argument(item)
            if text is None:
                problems.add(f"{path}[{index}]", f"expected a string, got {describe(item)}")
                bad = True
            else:
                argv.append(text)
        if bad:
            return None
    else:
        problems.add(path, f"expected a string or a list of strings, got {describe(value)}")
        return None
    if not argv and not allow_empty:
        problems.add(path, "must not be empty")
        return None
    return tuple(argv) if check_placeholders(problems, path, argv) else None


def check_placeholders(problems: Problems, path: str, argv: Sequence[str]) -> bool:
    known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    hint = f"known: {known}; write {{{{ and }}}} for literal braces"
    ok = True
    for arg in argv:
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(arg)]
        except ValueError as error:
            problems.add(path, f"bad braces in {describe(arg)} ({error}; {hint})")
            ok = False
            continue
        for name, spec, conv in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                problems.add(path, f"unknown placeholder {describe('{' + name + '}')} ({hint})")
                ok = False
            elif spec or conv:
                problems.add(path, f"placeholder {{{name}}} takes no format spec or conversion")
                ok = False
    return ok


def read_str_map(problems: Problems, path: str, value: object) -> dict[str, str] | None:
    """Environment-style NAME: value pairs; numbers are taken as their text."""
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping of names to strings, got {describe(value)}")
        return None
    result: dict[str, str] = {}
    ok = True
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            problems.add(path, f"invalid variable name {describe(key)}")
            ok = False
            continue
        text = _argument(item)
        if text is None or "\0" in text:
            problems.add(join(path, key), f"expected a string, got {describe(item)}")
            ok = False
            continue
        result[key] = text
    return result if ok else None


def suggestion(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Section:
    """One mapping of the file at a key path; unknown keys are reported on entry.

    A missing or null section reads as empty, so every key takes its default.
    """

    def __init__(self, problems: Problems, path: str, raw: object, known: Sequence[str]) -> None:
        self.problems = problems
        self.path = path
        self.data: dict[object, object] = {}
        if raw is None:
            return
        if not isinstance(raw, dict):
            problems.add(path or "top level", f"expected a mapping, got {describe(raw)}")
            return
        self.data = raw
        for key in raw:
            if key not in known:
                hint = suggestion(key, known) if isinstance(key, str) else ""
                problems.add(path or "top level", f"unknown key {describe(key)}{hint}")

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def get_int(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        if key not in self.data:
            return default
        found = read_int(
            self.problems, self.at(key), self.data[key], minimum=minimum, maximum=maximum
        )
        return default if found is None else found

    def get_optional_int(self, key: str, *, minimum: int) -> int | None:
        if self.data.get(key) is None:
            return None
        return read_int(self.problems, self.at(key), self.data[key], minimum=minimum)

    def get_number(
        self, key: str, default: float, *, minimum: float, exclusive: bool = False
    ) -> float:
        if key not in self.data:
            return default
        found = read_number(
            self.problems, self.at(key), self.data[key], minimum=minimum, exclusive=exclusive
        )
        return default if found is None else found

    def get_bool(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        found = read_bool(self.problems, self.at(key), self.data[key])
        return default if found is None else found

    def get_str(self, key: str, default: str, *, no_whitespace: bool = False) -> str:
        if key not in self.data:
            return default
        found = read_str(self.problems, self.at(key), self.data[key], no_whitespace=no_whitespace)
        return default if found is None else found

    def get_optional_str(self, key: str) -> str | None:
        if self.data.get(key) is None:
            return None
        return read_str(self.problems, self.at(key), self.data[key])

    def get_choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, str) and value in choices:
            return value
        allowed = " or ".join(repr(choice) for choice in choices)
        self.problems.add(self.at(key), f"expected {allowed}, got {describe(value)}")
        return default
