"""Checks across models: one namespace of names, placements that can happen, Ray's needs.

Each check names the key path of the value at fault (``defaults.gpu_ids`` when a
model inherited it) and, for a clash, both places.
"""

from __future__ import annotations

from typing import Literal

from .models import ReadModels
from .schema import GpuSpec, ModelConfig
from .values import Problems, fmt_number, join

Gpus = tuple[GpuSpec, ...] | Literal["auto", "ray"] | None


def check_names(problems: Problems, read: ReadModels) -> None:
    """Every name a request may use (model, alias, adapter, adapter alias) leads to one place."""
    models = read.models
    owner: dict[str, str] = {name: join("models", name) for name in models}
    alias_of: dict[str, str] = {}
    for model in models.values():
        where = join(join("models", model.name), "aliases")
        for alias in model.aliases:
            if alias == model.name:
                problems.add(where, f"{alias!r} is the model's own name")
            elif alias in models:
                problems.add(where, f"{alias!r} is the name of another model")
            elif alias_of.get(alias) == model.name:
                problems.add(where, f"{alias!r} is listed twice")
            elif alias in alias_of:
                problems.add(where, f"{alias!r} is already an alias of models.{alias_of[alias]}")
            else:
                alias_of[alias] = model.name
                owner[alias] = where
    for model in models.values():
        for adapter in model.adapters.values():
            place = join(join(join("models", model.name), "adapters"), adapter.name)
            _claim(problems, owner, adapter.name, place, place)
            for alias in adapter.aliases:
                _claim(problems, owner, alias, join(place, "aliases"), join(place, "aliases"))


def _claim(problems: Problems, owner: dict[str, str], name: str, where: str, place: str) -> None:
    if name in owner:
        other = owner[name]
        what = "listed twice" if other == place else f"already used by {other}"
        problems.add(where, f"{name!r} is {what} (models, aliases and adapters share one "
                     f"namespace)")
    else:
        owner[name] = place


def check_fit(problems: Problems, read: ReadModels, gpus: Gpus) -> None:
    """A model that could never be placed where it may go is a config error.

    ``vram_gb`` is what the model needs on each of its ``gpu_count`` GPUs; ``gpu_ids``
    narrows the GPUs it may use.
    """
    for model in read.models.values():
        if not model.managed:
            continue
        if model.gpu_ids is not None:
            _fit_allowed(problems, read, model, gpus)
        elif isinstance(gpus, tuple):
            _fit_declared(problems, model, gpus)


def _fit_declared(problems: Problems, model: ModelConfig, gpus: tuple[GpuSpec, ...]) -> None:
    if not gpus:
        return
    path = join("models", model.name)
    if model.gpu_count > len(gpus):
        verb = "is" if len(gpus) == 1 else "are"
        problems.add(
            join(path, "gpu_count"),
            f"needs {model.gpu_count} GPUs but only {len(gpus)} {verb} declared",
        )
        return
    if model.vram_gb <= 0:
        return
    fitting = sum(1 for gpu in gpus if gpu.vram_gb >= model.vram_gb)
    size = fmt_number(model.vram_gb)
    largest = max(gpu.vram_gb for gpu in gpus)
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


def _fit_allowed(problems: Problems, read: ReadModels, model: ModelConfig, gpus: Gpus) -> None:
    ids = model.gpu_ids or ()
    where = read.where(model.name, "gpu_ids")
    if gpus is None:
        problems.add(where, "no GPUs are declared (gpus is not set), so there is nothing to "
                     "choose from")
        return
    if len(ids) < model.gpu_count:
        problems.add(where, f"allows {len(ids)} GPU(s) but gpu_count is {model.gpu_count}")
        return
    if not isinstance(gpus, tuple):
        return  # auto and ray: the GPUs are known at start
    declared = {gpu.id: gpu for gpu in gpus}
    unknown = [gpu_id for gpu_id in ids if gpu_id not in declared]
    if unknown:
        known = ", ".join(str(gpu.id) for gpu in gpus) or "none"
        problems.add(where, f"GPU {', '.join(map(str, unknown))} is not among the configured "
                     f"GPUs ({known})")
        return
    fitting = sum(1 for gpu_id in ids if declared[gpu_id].vram_gb >= model.vram_gb)
    if fitting < model.gpu_count:
        problems.add(where, f"{fmt_number(model.vram_gb)} GB fits on {fitting} of the allowed "
                     f"GPUs {list(ids)} but gpu_count is {model.gpu_count}")


def check_defaults(problems: Problems, read: ReadModels) -> None:
    """At most one resident default per set of GPUs it may use."""
    first: dict[frozenset[int] | None, str] = {}
    for model in read.models.values():
        if not model.default:
            continue
        key = None if model.gpu_ids is None else frozenset(model.gpu_ids)
        if key in first:
            gpus = "all GPUs" if key is None else f"GPUs {sorted(key)}"
            problems.add(read.where(model.name, "default"),
                         f"models.{first[key]} is already the default for {gpus}; "
                         f"at most one default per GPU set")
        else:
            first[key] = model.name


def check_ray(problems: Problems, read: ReadModels, gpus: Gpus) -> None:
    """Ray models take their GPUs from the cluster, and a cluster's GPUs only serve Ray models."""
    for model in read.models.values():
        if not model.managed:
            continue
        where = read.where(model.name, "launcher")
        if model.launcher == "ray" and gpus != "ray":
            problems.add(where, "ray needs gpus: ray (the GPUs are the cluster's, read at start)")
        elif model.launcher != "ray" and gpus == "ray":
            problems.add(where, f"gpus: ray places models on the cluster's nodes, but this "
                         f"model's launcher is {model.launcher} (set launcher: ray here or in "
                         f"defaults)")
