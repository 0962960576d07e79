"""Talking to vLLM's sleep mode (the development endpoints of a server started with
``VLLM_SERVER_DEV_MODE=1``), and the one-token answer that checks a wake.

vLLM reads ``level`` and ``mode`` from the query string only (a JSON body is
ignored and gives level 1), and its endpoints answer 200 even when nothing
changed, so every step is confirmed with ``GET /is_sleeping``. ``mode=wait``
lets requests still running finish before the weights go: a second guard
behind the runtime's rule that only a drained server is put to sleep (vLLM
kills its engine on a sleep with decodes in flight yet answers 200).
"""

from __future__ import annotations

import json
from typing import Protocol

import aiohttp

SLEEP_TIMEOUT_S = 120.0


class SleepError(Exception):
    """A sleep, wake or check that failed or was not confirmed."""


class SleepControl(Protocol):
    async def sleep(self, base_url: str, level: int) -> None: ...

    async def wake(self, base_url: str, level: int) -> None: ...

    async def is_sleeping(self, base_url: str) -> bool: ...

    async def answer(self, base_url: str, model: str) -> str:
        """A one-token completion at temperature 0 (the wake check compares them)."""


class HttpSleepControl:
    def __init__(self, session: aiohttp.ClientSession, timeout_s: float = SLEEP_TIMEOUT_S) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _post(self, url: str, body: object = None) -> str:
        try:
            async with self._session.post(url, json=body, timeout=self._timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise SleepError(f"POST {_path(url)} answered {resp.status}: {text[:300]}")
                return text
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SleepError(f"POST {_path(url)} failed: {type(exc).__name__} {exc}") from exc

    async def is_sleeping(self, base_url: str) -> bool:
        url = base_url + "/is_sleeping"
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise SleepError(f"GET /is_sleeping answered {resp.status}: {text[:300]}")
                doc = json.loads(text)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise SleepError(f"GET /is_sleeping failed: {type(exc).__name__} {exc}") from exc
        value = doc.get("is_sleeping") if isinstance(doc, dict) else None
        if not isinstance(value, bool):
            raise SleepError(f"GET /is_sleeping answered no is_sleeping flag: {text[:300]}")
        return value

    async def sleep(self, base_url: str, level: int) -> None:
        await self._post(f"{base_url}/sleep?level={level}&mode=wait")
        if not await self.is_sleeping(base_url):
            raise SleepError(f"/sleep?level={level} answered 200 but /is_sleeping says false")

    async def wake(self, base_url: str, level: int) -> None:
        if level >= 2:
            # Level 2 dropped the weights: bring the buffers back, reload the weights into
            # them, then the KV cache (and forget cached prefixes computed before the sleep).
            await self._post(f"{base_url}/wake_up?tags=weights")
            await self._post(f"{base_url}/collective_rpc", {"method": "reload_weights"})
            await self._post(f"{base_url}/wake_up?tags=kv_cache")
            await self._post(f"{base_url}/reset_prefix_cache")
        else:
            await self._post(f"{base_url}/wake_up")
        if await self.is_sleeping(base_url):
            raise SleepError("/wake_up answered 200 but /is_sleeping still says true")

    async def answer(self, base_url: str, model: str) -> str:
        body = {"model": model, "prompt": "The", "max_tokens": 1, "temperature": 0}
        text = await self._post(base_url + "/v1/completions", body)
        try:
            doc = json.loads(text)
            result = doc["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SleepError(f"the check completion answered no text: {text[:300]}") from exc
        if not isinstance(result, str):
            raise SleepError(f"the check completion answered no text: {text[:300]}")
        return result


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[-1] if url.count("/") >= 3 else url
