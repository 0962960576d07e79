"""LoRA adapters loaded at runtime, with vLLM 0.32's answers and errors (measured).

An adapter changes the text a request gets: its tokens carry a tag derived
from the adapter's folder, so two adapters answer differently, one adapter
answers the same every time, and one folder loaded under two names answers
identically, as with real adapters at temperature 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .options import Settings
from .parsing import ApiError, validation_error

CONFIG_FILE = "adapter_config.json"
# PEFT's default rank, for a config that names none.
DEFAULT_RANK = 8


@dataclass(frozen=True)
class Adapter:
    name: str
    # As the client gave it: vLLM lists it unchanged as the card's "root".
    path: str
    # The tag in every token this adapter generates.
    voice: str
    created: int


def _shown(path: str) -> str:
    # vLLM rewrites paths in its error messages to hide the server's layout.
    return "<path>" if os.path.isabs(path) else path


def _worker_failed(reason: str) -> ApiError:
    print(f"ERROR fake worker: {reason}", file=sys.stderr, flush=True)
    return ApiError(
        f"Call to add_lora method failed: Worker failed with error '{reason}', "
        "please check the stack trace above for the root cause",
        500,
        "InternalServerError",
    )


def _fields(body: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        value = body.get(name)
        if value is None:
            raise validation_error(f"body.{name}", "missing", "Field required", body)
        if not isinstance(value, str):
            raise validation_error(
                f"body.{name}", "string_type", "Input should be a valid string", value
            )
        values.append(value)
    return values


def _rank(folder: str) -> int:
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as handle:
        config = json.load(handle)
    rank = config.get("r", DEFAULT_RANK) if isinstance(config, dict) else DEFAULT_RANK
    return rank if isinstance(rank, int) else DEFAULT_RANK


class Adapters:
    """The adapters this server has loaded, and the requests running through each."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.loaded: dict[str, Adapter] = {}
        self.running: Counter[str] = Counter()

    def get(self, name: str) -> Adapter | None:
        return self.loaded.get(name)

    def load(self, body: dict[str, Any]) -> str:
        """Load an adapter; the success text, or ApiError with vLLM's status and message."""
        name, path = _fields(body, ("lora_name", "lora_path"))
        if not name or not path:
            raise ApiError(
                "Both 'lora_name' and 'lora_path' must be provided.", 400, "InvalidUserInput"
            )
        if name in self.loaded and not body.get("load_inplace"):
            raise ApiError(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                400,
                "InvalidUserInput",
            )
        if name in self._settings.served_model_names:
            raise ApiError(
                f"The lora adapter '{name}' conflicts with a served base model.",
                400,
                "InvalidUserInput",
            )
        if not self._settings.enable_lora:
            raise _worker_failed("LoRA is not enabled. Use --enable-lora to enable LoRA.")
        if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
            raise ApiError(
                f"Loading lora {name} failed: No adapter found for {_shown(path)}",
                404,
                "NotFoundError",
            )
        try:
            rank = _rank(path)
        except (OSError, ValueError) as exc:
            raise _worker_failed(f"{CONFIG_FILE} could not be read: {exc}") from None
        if rank > self._settings.max_lora_rank:
            raise _worker_failed(
                f"LoRA rank {rank} is greater than max_lora_rank {self._settings.max_lora_rank}."
            )
        digest = hashlib.blake2b(os.path.realpath(path).encode(), digest_size=3).hexdigest()
        self.loaded[name] = Adapter(name, path, digest, int(time.time()))
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict[str, Any]) -> str:
        [name] = _fields(body, ("lora_name",))
        if self.loaded.pop(name, None) is None:
            raise ApiError(f"The lora adapter '{name}' cannot be found.", 404, "NotFoundError")
        return f"Success: LoRA adapter '{name}' removed successfully."

    def cards(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries, listed after the base's."""
        return [
            {
                "id": adapter.name,
                "object": "model",
                "created": adapter.created,
                "owned_by": "vllm",
                "root": adapter.path,
                "parent": self._settings.model_name,
                "max_model_len": None,
                "permission": [],
            }
            for adapter in self.loaded.values()
        ]

    def requests_info(self) -> str:
        """vLLM's ``vllm:lora_requests_info`` labels for the adapters now running."""
        running = ",".join(sorted(name for name, n in self.running.items() if n > 0))
        return (
            f'max_lora="{self._settings.max_loras}",running_lora_adapters="{running}",'
            'waiting_lora_adapters=""'
        )
