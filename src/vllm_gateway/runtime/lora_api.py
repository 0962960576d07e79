"""Talking to vLLM's runtime LoRA endpoints (a server started with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``)."""

from __future__ import annotations

import json
from typing import Protocol

import aiohttp

LORA_TIMEOUT_S = 120.0


class LoraError(Exception):
    """A load or unload the server refused; the message carries vLLM's reason."""


class LoraControl(Protocol):
    async def load(self, base_url: str, name: str, path: str) -> None: ...

    async def unload(self, base_url: str, name: str) -> None: ...


class HttpLoraControl:
    def __init__(self, session: aiohttp.ClientSession, timeout_s: float = LORA_TIMEOUT_S) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _post(self, url: str, body: dict[str, str]) -> None:
        try:
            async with self._session.post(url, json=body, timeout=self._timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise LoraError(_reason(text) or f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise LoraError(f"{type(exc).__name__} {exc}") from exc

    async def load(self, base_url: str, name: str, path: str) -> None:
        await self._post(base_url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload(self, base_url: str, name: str) -> None:
        await self._post(base_url + "/v1/unload_lora_adapter", {"lora_name": name})


def _reason(text: str) -> str:
    """vLLM's error message out of its JSON error body, else the text itself."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(doc.get("detail"), str):
            return str(doc["detail"])
    return text.strip()[:500]
