"""The dashboard's page and its files over HTTP, in-process (inproc.py): each file it loads is
served with its content type, open like the page even where status needs a key; any other name
under /gateway/ui/ is a 404 and a path that tries to climb out is refused, both as OpenAI errors.
That the page works in a browser is tested in tests/browser."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import httpx
from inproc import InProcessGateway, fake_model

from vllm_gateway.web.ops import DASHBOARD_FILES

Start = Callable[..., Awaitable[InProcessGateway]]
STATIC = resources.files("vllm_gateway").joinpath("static")
# What the page and the modules load: <link href>/<script src> and "import ... from" targets.
_REFERENCE = re.compile(r'(?:href|src)="([^"]+)"|from "([^"]+)"')


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json"), r.headers["Content-Type"]
    error: dict[str, Any] = r.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    return error


def test_every_file_the_page_loads_is_on_the_list_and_every_listed_file_exists() -> None:
    shipped = {p.name for p in STATIC.iterdir() if p.name.endswith((".css", ".js"))}
    assert shipped == set(DASHBOARD_FILES)
    loaded = set()
    for name in ("dashboard.html", *DASHBOARD_FILES):
        for absolute, relative in _REFERENCE.findall(STATIC.joinpath(name).read_text()):
            # Absolute from the page (opened at / or at /gateway/ui), relative between modules.
            if absolute:
                assert absolute.startswith("/gateway/ui/"), (name, absolute)
            else:
                assert relative.startswith("./") and "/" not in relative[2:], (name, relative)
            loaded.add((absolute or relative).rpartition("/")[2])
    assert loaded == set(DASHBOARD_FILES)


async def test_page_and_files_are_served_open_with_their_content_types(inproc: Start) -> None:
    keys = [{"name": "ops", "key_env": "TEST_ADMIN_KEY", "admin": True}]
    gw = await inproc({"alpha": fake_model()}, env={"TEST_ADMIN_KEY": "adm-3b1f"},
                      auth={"protect_status": True, "keys": keys})
    async with gw.client(10) as c:
        # Status needs the key here; the page and its files stay as open as /health.
        assert error_of(await c.get("/gateway/status"), 401)["type"] == "authentication_error"
        for path in ("/", "/gateway/ui"):
            r = await c.get(path)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
            assert '<script type="module" src="/gateway/ui/dashboard.js">' in r.text
        for name, content_type in DASHBOARD_FILES.items():
            r = await c.get("/gateway/ui/" + name)
            assert r.status_code == 200, (name, r.text[:300])
            assert r.headers["Content-Type"] == content_type
            assert r.content == STATIC.joinpath(name).read_bytes()
        assert DASHBOARD_FILES["dashboard.css"] == "text/css; charset=utf-8"
        assert DASHBOARD_FILES["dashboard.js"] == "text/javascript; charset=utf-8"


async def test_other_names_are_404_and_climbing_out_is_refused(inproc: Start) -> None:
    gw = await inproc({"alpha": fake_model()})
    async with gw.client(10) as c:
        # Files that are in the package, and names that are not: only the list is served.
        for name in ("nope.js", "dashboard.html", "__init__.py", "py.typed", "DASHBOARD.JS",
                     "ui.js.map", "ui.js;x", ""):
            error = error_of(await c.get("/gateway/ui/" + name), 404)
            assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")
            assert "/gateway/ui/" in error["message"]
        # Sent as they are (httpx would resolve the dot segments itself before sending).
        for target in ("/gateway/ui/../web/ops.py", "/gateway/ui/%2e%2e/errors.py",
                       "/gateway/ui/..%2f..%2fpyproject.toml", "/gateway/ui/..%5cauth.py",
                       "/gateway/ui/./ui.js", "/gateway/ui//ui.js", "/gateway/ui/ui.js/.."):
            r = await c.get(gw.url + "/", extensions={"target": target.encode()})
            assert error_of(r, 400)["code"] == "invalid_path", target
