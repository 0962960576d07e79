"""The dashboard in headless Chromium, against a real gateway with fake model servers.

A chat request starts a stopped model and the page shows it become ready;
the page's own Unload button stops it again, beside busy and broken neighbours.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from harness import GatewayProc, chat, fake_command

UI_TIMEOUT_MS = 30_000
Screenshot = Callable[[Any, str], Awaitable[Path]]  # the conftest's screenshot fixture


def fake_model(vram_gb: float, *fake_args: str, **settings: Any) -> dict[str, Any]:
    return {"command": fake_command(*fake_args, startup_delay=1), "vram_gb": vram_gb,
            "startup_timeout_s": 60, "idle_timeout_s": 600, **settings}


MODELS = {
    "chat-small": fake_model(8, aliases=["small"]),
    # Slow tokens keep requests in flight long enough to be seen on the page.
    "coder-7b": fake_model(18, "--token-delay", "0.25", max_concurrent=16),
    "embed": fake_model(4),
    # Sizes chosen so no start needs an eviction: chat-small stays where the test left it.
    "vision-11b": fake_model(12, "--fail-start"),
}
GPUS = [{"id": 0, "vram_gb": 24}, {"id": 1, "vram_gb": 24}]


async def test_dashboard_follows_load_and_unload(
    page_and_errors: tuple[Any, list[str]],
    gateway: Callable[..., GatewayProc],
    screenshot: Screenshot,
) -> None:
    from playwright.async_api import expect

    page, errors = page_and_errors
    gw = await asyncio.to_thread(gateway, MODELS, gpus=GPUS)
    await page.goto(gw.url + "/")
    row = page.locator('tr[data-model="chat-small"]')
    state = row.locator('[data-field="state"]')
    await expect(state).to_have_text("stopped", timeout=UI_TIMEOUT_MS)
    await expect(row.locator('[data-field="last_used"]')).to_have_text("never")
    await expect(page.locator("#live")).to_have_attribute("data-live", "live")

    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        first = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat("chat-small", max_tokens=8))
        )
        await expect(state).to_have_text("ready", timeout=UI_TIMEOUT_MS)
        answer = await first
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        await expect(row.locator('[data-field="last_used"]')).to_have_text(
            re.compile(r"^(just now|\d+ s ago)$")
        )
        await expect(row.locator('[data-field="start"]')).to_have_text(
            re.compile(r"^took \d+\.\d s$")
        )
        await expect(row.locator('[data-field="gpus"]')).to_have_text(re.compile(r"^GPU \d$"))
        await expect(row.locator('button[data-action="load"]')).to_be_disabled()
        await expect(
            page.locator('#events .event[data-model="chat-small"][data-kind="ready"]')
        ).to_have_count(1)

        coder = page.locator('tr[data-model="coder-7b"]')
        vision = page.locator('tr[data-model="vision-11b"]')
        broken = asyncio.create_task(client.post("/gateway/models/vision-11b/load"))
        loaded = await client.post("/gateway/models/coder-7b/load")
        assert loaded.status_code == 200, loaded.text
        busy = [
            asyncio.create_task(
                client.post("/v1/chat/completions", json=chat("coder-7b", max_tokens=24))
            )
            for _ in range(12)
        ]
        await expect(coder.locator('[data-field="in_flight"]')).to_have_text(
            "12 / 16", timeout=UI_TIMEOUT_MS
        )
        await expect(coder.locator('[data-field="kv"]')).to_have_text(
            re.compile(r"^\d+ %$"), timeout=UI_TIMEOUT_MS
        )
        await broken
        # A failed start waits for its next try.
        await expect(vision.locator('[data-field="state"]')).to_have_text(
            "backoff", timeout=UI_TIMEOUT_MS
        )
        await expect(vision.locator('[data-field="start"]')).to_have_text(
            re.compile(r"^retry in \d+\.\d s$")
        )
        await expect(vision.locator('button[data-action="load"]')).to_be_enabled()
        await expect(page.locator('tr[data-error-for="vision-11b"]')).to_contain_text(
            "exited with code 1"
        )
        await expect(page.locator('[data-gpu] [data-field="used"]')).to_have_text(
            ["8 / 24 GB placed", "18 / 24 GB placed"]
        )
        await screenshot(page, "dashboard-live.png")

        await row.locator('button[data-action="unload"]').click()
        await expect(state).to_have_text("stopped", timeout=UI_TIMEOUT_MS)
        await expect(row.locator('button[data-action="load"]')).to_be_enabled()
        await expect(row.locator('[data-field="gpus"]')).to_have_text("—")
        await expect(
            page.locator('#events .event[data-model="chat-small"][data-kind="stopped"]')
        ).to_have_count(1)
        for done in await asyncio.gather(*busy):
            assert done.status_code == 200, done.text
    await expect(coder.locator('[data-field="in_flight"]')).to_have_text("0 / 16")
    await screenshot(page, "dashboard-after-unload.png")
    assert errors == []


async def test_dashboard_asks_for_an_admin_key(
    page_and_errors: tuple[Any, list[str]], gateway: Callable[..., GatewayProc]
) -> None:
    """With protect_status on, any key lets the page read; only an admin key loads."""
    from playwright.async_api import expect

    page, errors = page_and_errors
    auth = {"protect_status": True, "keys": [
        {"name": "ops", "key_env": "DASH_ADMIN_KEY", "admin": True},
        {"name": "app", "key_env": "DASH_USER_KEY"},
    ]}
    keys = {"DASH_ADMIN_KEY": "admin-secret-1", "DASH_USER_KEY": "user-secret-1"}
    gw = await asyncio.to_thread(
        gateway, {"embed": fake_model(4)}, gpus=GPUS, auth=auth, env=keys
    )
    await page.goto(gw.url + "/gateway/ui")
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#live")).to_have_attribute("data-live", "locked")

    await page.locator("#key-input").fill(keys["DASH_USER_KEY"])
    await page.locator("#key-save").click()
    row = page.locator('tr[data-model="embed"]')
    await expect(row.locator('[data-field="state"]')).to_have_text("stopped", timeout=UI_TIMEOUT_MS)
    await expect(dialog).to_be_hidden()

    await row.locator('button[data-action="load"]').click()
    await expect(dialog).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(page.locator("#key-error")).to_contain_text("HTTP 403")
    await page.locator("#key-input").fill(keys["DASH_ADMIN_KEY"])
    await page.locator("#key-save").click()
    await expect(row.locator('[data-field="state"]')).to_have_text("ready", timeout=UI_TIMEOUT_MS)
    await expect(dialog).to_be_hidden()
    stored = await page.evaluate("sessionStorage.getItem('vllm-gateway.admin-key')")
    assert stored == keys["DASH_ADMIN_KEY"]
    assert errors == []
