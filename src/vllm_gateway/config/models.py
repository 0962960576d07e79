"""The ``defaults`` and ``models`` sections: one :class:`ModelConfig` per entry.

A model is reached in exactly one way: a ``command`` the gateway starts (as a
process, or on a Ray node with ``launcher: ray``), a ``url`` of a server that
already runs, or ``launcher: docker`` with an ``image``. Keys that the chosen way
would silently ignore are errors when the model sets them itself, so a typo in
intent shows up at check time rather than as a mystery at run time; the same
keys inherited from ``defaults`` are passed over (``image`` in defaults does not
concern a model with a ``command``).

A key a model does not set comes from, highest first: an environment variable,
the file's ``defaults``, the dataclass default in :mod:`vllm_gateway.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .env import EnvSettings
from .keys import KEYS, MODEL_KEYS, RawAdapter
from .schema import AdapterConfig, DockerSpec, ModelConfig
from .values import Problems, Section, describe, fmt_number, join

# Per-model keys that a predecessor's environment variable sets for every model.
ENV_VARIABLES: Final = {
    "max_concurrent": "GATEWAY_MAX_CONCURRENT",
    "max_queue": "GATEWAY_MAX_QUEUE_SIZE",
    "idle_timeout_s": "VLLM_INACTIVITY_TIMEOUT",
    "request_timeout_s": "VLLM_REQUEST_TIMEOUT",
}
_BUILTIN: Final = ModelConfig(name="")
NEEDS_A_WAY: Final = (
    "needs command (a server to start), url (a server already running) "
    "or launcher: docker with image"
)

# A value every model gets unless it sets its own, with where it was set.
Inherited = dict[str, tuple[object, str]]


@dataclass
class ReadModels:
    """The models read, and for each the place every value that won came from."""

    models: dict[str, ModelConfig] = field(default_factory=dict)
    origins: dict[str, dict[str, str]] = field(default_factory=dict)

    def where(self, model: str, key: str) -> str:
        """The key path to name in an error about this model's ``key``."""
        return self.origins.get(model, {}).get(key, join(join("models", model), key))


def read_defaults(problems: Problems, raw: object, env: EnvSettings) -> Inherited:
    """The file's ``defaults`` section, then the environment variables over it."""
    sec = Section(problems, "defaults", raw, MODEL_KEYS)
    inherited: Inherited = {}
    for key, item in sec.data.items():
        if not isinstance(key, str) or key not in KEYS:
            continue
        if not KEYS[key].in_defaults:
            problems.add(sec.at(key), "differs from model to model; set it under models.<name>")
            continue
        value = KEYS[key].read(problems, sec.at(key), item)
        if value is not None:
            inherited[key] = (value, sec.at(key))
    for key, variable in ENV_VARIABLES.items():
        value = getattr(env, key)
        if value is not None:
            inherited[key] = (value, variable)
    return inherited


def read_models(problems: Problems, raw: object, inherited: Inherited) -> ReadModels:
    found = ReadModels()
    if raw is None:
        problems.add("models", "at least one model is required")
        return found
    if not isinstance(raw, dict):
        problems.add(
            "models", f"expected a mapping of model names to settings, got {describe(raw)}"
        )
        return found
    if not raw:
        problems.add("models", "at least one model is required")
    for name, settings in raw.items():
        if _check_name(problems, name) and isinstance(name, str):
            model = _ModelReader(problems, name, settings, inherited).read()
            if model is not None:
                found.models[name], found.origins[name] = model
    return found


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


class _ModelReader:
    """One model's entry, merged over what it inherits."""

    def __init__(
        self, problems: Problems, name: str, raw: object, inherited: Inherited
    ) -> None:
        self.problems = problems
        self.name = name
        self.raw = raw
        self.path = join("models", name)
        self.sec = Section(problems, self.path, raw if isinstance(raw, dict) else {}, MODEL_KEYS)
        self.chosen: dict[str, object] = {key: value for key, (value, _) in inherited.items()}
        self.origin: dict[str, str] = {key: where for key, (_, where) in inherited.items()}

    def read(self) -> tuple[ModelConfig, dict[str, str]] | None:
        if not isinstance(self.raw, dict):
            self.problems.add(self.path, f"expected a mapping of settings, got {describe(self.raw)}")
            return None
        self._read_own()
        sec = self.sec
        ways = [key for key in ("command", "url", "image") if sec.has(key)]
        if len(ways) > 1:
            self.problems.add(
                self.path, f"give only one of command, url or image, got {' and '.join(ways)}"
            )
            return None
        model = self._remote() if ways == ["url"] else self._managed()
        if model is None:
            return None
        return model, self.origin

    def _read_own(self) -> None:
        inherited_env = self.chosen.get("env")
        for key, item in self.sec.data.items():
            if not isinstance(key, str) or key not in KEYS:
                continue
            value = KEYS[key].read(self.problems, self.sec.at(key), item)
            if value is None:
                continue
            if key == "env" and isinstance(inherited_env, dict) and isinstance(value, dict):
                value = {**inherited_env, **value}  # the model's own variables win
            self.chosen[key] = value
            self.origin[key] = self.sec.at(key)

    def where(self, key: str) -> str:
        return self.origin.get(key, self.sec.at(key))

    def _drop(self, key: str, message: str) -> None:
        """A key this model's way does not use: an error if set here, passed over if inherited."""
        if self.sec.has(key):
            self.problems.add(self.sec.at(key), message)
        self.chosen.pop(key, None)
        self.origin.pop(key, None)

    def _remote(self) -> ModelConfig:
        for key in MODEL_KEYS:
            if KEYS[key].starting:
                self._drop(key, "not used with url (the gateway only routes to a running server)")
        return self._build()

    def _managed(self) -> ModelConfig | None:
        launcher = self.chosen.get("launcher", _BUILTIN.launcher)
        source = "" if self.sec.has("launcher") or "launcher" not in self.origin else (
            f" (from {self.origin['launcher']})")
        for key in MODEL_KEYS:
            docker_key = KEYS[key].target == "docker"
            if docker_key and launcher != "docker":
                self._drop(key, f"only used with launcher: docker (this model's launcher is "
                           f"{launcher}{source})")
        if launcher != "ray":
            self._drop("node", f"only used with launcher: ray (this model's launcher is "
                       f"{launcher}{source})")
        if launcher == "docker":
            self._drop("command", f"not used with launcher: docker{source}; "
                       f"put the server's arguments in args")
            if "image" not in self.chosen and not self.sec.has("image"):
                self.problems.add(self.path, f"launcher: docker{source} needs image")
                return None
        elif not self.sec.has("command"):
            message = NEEDS_A_WAY if launcher == "subprocess" else (
                f"launcher: ray{source} needs command (the server to start on a node)")
            self.problems.add(self.path, message)
            return None
        model = self._build()
        self._check_sleep(model)
        self._check_default(model)
        return model

    def _build(self) -> ModelConfig:
        if self.chosen.get("network", DockerSpec().network) == "host":
            self._drop("container_port", "only used with network: bridge")
        # Each value was typed by its key's reader, which mypy cannot follow through the table.
        values: dict[str, Any] = dict(self.chosen)
        docker: dict[str, Any] = {key: values.pop(key) for key in list(values) if KEYS[key].target == "docker"}
        vram = values.pop("vram_gb", None)
        estimate = values.pop("vram_gb_estimate", None)
        if vram == "auto":
            if estimate is None:
                if not self.sec.has("vram_gb_estimate"):
                    self.problems.add(self.sec.at("vram_gb"), "auto needs vram_gb_estimate "
                                      "(the size assumed until one is measured)")
            else:
                values.update(vram_gb=estimate, vram_auto=True)
        elif self.sec.has("vram_gb_estimate"):
            self.problems.add(self.sec.at("vram_gb_estimate"), "only used with vram_gb: auto")
        elif vram is not None:
            values["vram_gb"] = vram
        adapters = values.pop("adapters", None)
        if isinstance(adapters, dict):
            values["adapters"] = self._adapters(adapters)
        model = replace(_BUILTIN, name=self.name, **values)
        if model.launcher == "docker" and model.url is None:
            model = replace(model, docker=replace(DockerSpec(), **docker))
        return model

    def _adapters(self, raw: Mapping[str, object]) -> dict[str, AdapterConfig]:
        return {
            name: AdapterConfig(name=name, base=self.name, path=entry.path, aliases=entry.aliases)
            for name, entry in raw.items()
            if isinstance(entry, RawAdapter)
        }

    def _check_sleep(self, model: ModelConfig) -> None:
        if model.sleep and model.vram_gb > 0 and model.sleep_vram_gb >= model.vram_gb:
            builtin = "" if "sleep_vram_gb" in self.origin else " (the default)"
            self.problems.add(
                self.where("sleep_vram_gb"),
                f"must be < vram_gb ({fmt_number(model.vram_gb)}): it is what a sleeping server "
                f"still holds per GPU, got {fmt_number(model.sleep_vram_gb)}{builtin}",
            )

    def _check_default(self, model: ModelConfig) -> None:
        if model.default and model.pinned:
            self.problems.add(
                self.sec.at("default"),
                "not with pinned: true (a pinned model is never evicted; a default may be "
                "evicted and comes back)",
            )
