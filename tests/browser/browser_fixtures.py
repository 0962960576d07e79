"""Headless Debian Chromium driven by Playwright, for the dashboard tests.

Every test under tests/browser is marked ``browser`` here, so the default run
(``-m 'not ... browser'`` in pyproject.toml) leaves them out; run them with
``pytest -m browser tests/browser`` after ``scripts/install_browser.sh``.

Playwright is used only as a driver: it never downloads a browser of its own.
Without Chromium or the playwright package every test here is skipped with the
hint to install them, unless BROWSER_TESTS_REQUIRED=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARTIFACTS = ROOT / "test-artifacts"
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
INSTALL_HINT = "run scripts/install_browser.sh"

Screenshot = Callable[..., Awaitable[Path]]  # (page, name, full_page=False)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on before -m deselects by it.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.browser)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("BROWSER_TESTS_REQUIRED") == "1":
        pytest.fail(f"{reason} (BROWSER_TESTS_REQUIRED=1)", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}")
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = _chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable(f"the Python package playwright is missing: {INSTALL_HINT}")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page_and_errors(browser: Any) -> AsyncIterator[tuple[Any, list[str]]]:
    """A 1280x800 dark-scheme page, and the script errors it raised (a test asserts none)."""
    context = await browser.new_context(viewport=VIEWPORT, color_scheme="dark")
    page = await context.new_page()
    errors: list[str] = []
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


@pytest.fixture
def screenshot() -> Screenshot:
    """Save a page's screenshot under test-artifacts/ (git-ignored).

    With DASHBOARD_SCREENSHOT_TO_DOCS=1 a shot named dashboard.png also replaces
    docs/dashboard.png, the README's picture; plain test runs leave git clean.
    """

    async def shoot(page: Any, name: str, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await page.screenshot(path=str(path), full_page=full_page)
        if name == "dashboard.png" and os.environ.get("DASHBOARD_SCREENSHOT_TO_DOCS") == "1":
            shutil.copyfile(path, ROOT / "docs" / "dashboard.png")
        return path

    return shoot
