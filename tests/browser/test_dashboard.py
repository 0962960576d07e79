"""The dashboard in headless Chromium, against a real gateway with fake model servers.

A chat request starts a stopped model and the page shows it become ready;
the page's own Unload button stops it again.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from .conftest import PageErrors, free_port, publish_to_docs, save_screenshot_path

pytestmark = pytest.mark.browser

START_DEADLINE_S = 30.0
UI_TIMEOUT_MS = 30_000


def fake_model(vram_gb: float, *fake_args: str, **settings: Any) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "vllm_gateway.fake_backend", "--port", "{port}",
        "--served-model-name", "{name}", "--startup-delay", "1", *fake_args,
    ]
    return {"command": command, "vram_gb": vram_gb, "startup_timeout_s": 60,
            "idle_timeout_s": 600, **settings}


def write_config(path: Path) -> None:
    config = {
        "gpus": [{"id": 0, "vram_gb": 24}, {"id": 1, "vram_gb": 24}],
        "models": {
            "chat-small": fake_model(8, aliases=["small"]),
            # Slow tokens keep requests in flight long enough to be seen on the page.
            "coder-7b": fake_model(18, "--token-delay", "0.25", max_concurrent=16),
            "embed": fake_model(4),
            "vision-11b": fake_model(12, "--fail-start"),
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def wait_until_serving(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                pytest.fail(f"gateway exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if (await client.get(url + "/gateway/status")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"gateway did not answer within {START_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


async def stop_process_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the gateway (it stops its model servers), then make sure nothing is left."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    config = tmp_path / "gateway.yaml"
    write_config(config)
    log = tmp_path / "gateway.log"
    port = free_port()
    # The gateway reads GATEWAY_* overrides; the caller's must not change this test's config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vllm_gateway.cli", "serve", "--config", str(config),
            "--port", str(port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(url, proc, log)
        yield url
    finally:
        await stop_process_tree(proc)


async def test_dashboard_follows_load_and_unload(
    gateway: str, page_and_errors: tuple[Any, PageErrors]
) -> None:
    from playwright.async_api import expect

    page, errors = page_and_errors
    await page.goto(gateway + "/")
    row = page.locator('tr[data-model="chat-small"]')
    state = row.locator('[data-field="state"]')
    await expect(state).to_have_text("stopped", timeout=UI_TIMEOUT_MS)
    await expect(row.locator('[data-field="last_used"]')).to_have_text("never")
    await expect(page.locator("#live")).to_have_attribute("data-live", "live")

    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        chat = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body("chat-small")))
        await expect(state).to_have_text("ready", timeout=UI_TIMEOUT_MS)
        answer = await chat
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

        # Busy and broken neighbours, as a real deployment has them.
        coder = page.locator('tr[data-model="coder-7b"]')
        vision = page.locator('tr[data-model="vision-11b"]')
        broken = asyncio.create_task(client.post("/gateway/models/vision-11b/load"))
        loaded = await client.post("/gateway/models/coder-7b/load")
        assert loaded.status_code == 200, loaded.text
        busy = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat_body("coder-7b", 24)))
            for _ in range(12)
        ]
        await expect(coder.locator('[data-field="in_flight"]')).to_have_text(
            "12 / 16", timeout=UI_TIMEOUT_MS
        )
        await expect(coder.locator('[data-field="kv"]')).to_have_text(
            re.compile(r"^\d+ %$"), timeout=UI_TIMEOUT_MS
        )
        await broken
        await expect(vision.locator('[data-field="state"]')).to_have_text(
            "failed", timeout=UI_TIMEOUT_MS
        )
        await expect(page.locator('tr[data-error-for="vision-11b"]')).to_contain_text(
            "exited with code 1"
        )
        await expect(page.locator('[data-gpu] [data-field="used"]')).to_have_text(
            ["8 / 24 GB placed", "18 / 24 GB placed"]
        )
        shot = save_screenshot_path("dashboard.png")
        await page.screenshot(path=str(shot))
        publish_to_docs(shot)

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
    await page.screenshot(path=str(save_screenshot_path("dashboard-after-unload.png")))
    assert errors == []


def chat_body(model: str, max_tokens: int = 8) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Hello"}]}
