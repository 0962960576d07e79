"""Headless Debian Chromium driven by Playwright, for the dashboard tests.

Playwright is used only as a driver: it never downloads a browser of its own
(scripts/install_browser.sh installs Debian's chromium and the Python package).
Without either, the tests here are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install_browser.sh")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the Python package playwright is missing: run scripts/install_browser.sh")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class PageErrors(list[str]):
    """Uncaught script errors and console errors of a page; a test asserts it stays empty."""


@pytest.fixture
async def page_and_errors(browser: Any) -> AsyncIterator[tuple[Any, PageErrors]]:
    context = await browser.new_context(viewport=VIEWPORT, color_scheme="dark")
    page = await context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def on_console(msg: Any) -> None:
        # Chromium logs every 4xx/5xx answer as a console error; the tests provoke some on purpose.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(f"console: {msg.text}")

    page.on("console", on_console)
    try:
        yield page, errors
    finally:
        await context.close()


def save_screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def publish_to_docs(shot: Path) -> None:
    """Refresh docs/dashboard.png from a run, only on request, so test runs leave git clean."""
    if os.environ.get("DASHBOARD_SCREENSHOT_TO_DOCS") == "1":
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")
