"""The terminal side: ``vllm-gateway status | load | unload | logs`` against a running gateway."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# The server clamps ``lines`` to this; asking for it returns the model's whole log window.
LOG_WINDOW = 10000
REFRESH_S = 1.0


class ClientError(Exception):
    pass


def _call(url: str, method: str = "GET", api_key: str | None = None, timeout: float = 1900) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"not a usable gateway URL: {url} (expected http://HOST:PORT)")
    try:
        request = urllib.request.Request(url, method=method,
                                         data=b"" if method == "POST" else None)
    except ValueError as exc:
        raise ClientError(f"not a usable gateway URL: {url} ({exc})") from None
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ClientError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"cannot reach the gateway at {url}: {exc}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise ClientError(f"{url} did not answer JSON: is --url a vllm-gateway?") from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0.0, time.time() - ts)
    if secs < 90:
        return f"{secs:.0f} s ago"
    if secs < 5400:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


STATE_STYLE = {"ready": "green", "starting": "yellow", "stopping": "magenta", "failed": "red",
               "stopped": "dim"}


def render(doc: dict[str, Any]) -> Group:
    gpus = Table(title="GPUs", title_justify="left")
    for col in ("id", "placed", "total", "driver used", ""):
        gpus.add_column(col)
    for g in doc.get("gpus", []):
        total = g["vram_gb"] or 1
        filled = max(0, min(20, round(20 * g["used_gb"] / total)))
        bar = "[cyan]" + "█" * filled + "[/][dim]" + "░" * (20 - filled) + "[/]"
        driver = "-" if g.get("driver_used_gb") is None else f"{g['driver_used_gb']:g} GB"
        gpus.add_row(str(g["id"]), f"{g['used_gb']:g} GB", f"{g['vram_gb']:g} GB", driver, bar)
    models = Table(title="Models", title_justify="left")
    for col in ("model", "state", "GPUs", "VRAM", "in flight", "queued", "last used",
                "last start", "port", "pid"):
        models.add_column(col)
    problems: list[str] = []
    for m in doc.get("models", []):
        style = STATE_STYLE.get(m["state"], "")
        state = f"[{style}]{m['state']}[/]"
        if m.get("starting_for_s") is not None:
            state += f" ({m['starting_for_s']:.0f} s)"
        models.add_row(
            escape(m["name"]), state, ",".join(str(g) for g in m.get("gpus", [])) or "-",
            f"{m['vram_gb']:g} GB" if m.get("vram_gb") else "-",
            f"{m['in_flight']}/{m['max_concurrent']}", f"{m['queued']}/{m['max_queue']}",
            _ago(m.get("last_used")), _secs(m.get("last_start_s")),
            str(m.get("port") or "-"), str(m.get("pid") or "-"))
        if m.get("error") and m["state"] == "failed":
            retry = m.get("retry_in_s")
            after = f" (next try in {retry:.0f} s)" if retry else ""
            first_line = str(m["error"]).splitlines()[0] if str(m["error"]).strip() else ""
            problems.append(f"[red]{escape(m['name'])}[/]: {escape(first_line)}{after}")
    parts: list[RenderableType] = [models]
    if doc.get("gpus"):
        parts.insert(0, gpus)
    parts.extend(problems)
    return Group(*parts)


def status(url: str, watch: bool = False, raw: bool = False, api_key: str | None = None) -> int:
    endpoint = url.rstrip("/") + "/gateway/status"

    def fetch() -> dict[str, Any]:
        doc: dict[str, Any] = _call(endpoint, api_key=api_key, timeout=10)
        return doc

    if raw:
        print(json.dumps(fetch(), indent=2))
        return 0
    console = Console()
    first = render(fetch())  # an unreachable gateway fails here, before any screen is drawn
    if not watch:
        console.print(first)
        return 0
    if not console.is_terminal:
        # Live redraws in place only on a terminal; elsewhere (a pipe, a log file) it would
        # print nothing until it stops, so print one stamped snapshot per refresh instead.
        while True:
            console.print(Text(time.strftime("%H:%M:%S"), style="bold"))
            console.print(first)
            console.file.flush()
            time.sleep(REFRESH_S)
            first = render(fetch())
    with Live(first, console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(REFRESH_S)
            try:
                live.update(render(fetch()))
            except ClientError as exc:
                # Keep watching through a gateway restart; say so instead of exiting.
                live.update(Text(f"{exc} (retrying)", style="red"))


def admin(url: str, action: str, name: str, api_key: str | None) -> int:
    doc = _call(f"{url.rstrip('/')}/gateway/models/{name}/{action}", "POST", api_key)
    print(f"{doc['name']}: {doc['state']}")
    return 0


def new_lines(seen: list[str], recent: list[str]) -> list[str]:
    """The lines of ``recent`` that follow those already shown.

    The server keeps a bounded window per model: a newer window is the older one
    minus some of its first lines, plus new lines. Lines repeat (access logs), so
    they are matched by position, not by content. A window that does not continue
    the old one belongs to a restarted server and is new as a whole.
    """
    for dropped in range(len(seen) + 1):
        kept = len(seen) - dropped
        if recent[:kept] == seen[dropped:]:
            return recent[kept:]
    return recent


def logs(url: str, name: str, lines: int, follow: bool, api_key: str | None = None) -> int:
    endpoint = f"{url.rstrip('/')}/gateway/models/{name}/logs?lines={LOG_WINDOW}"

    def fetch() -> list[str]:
        got: list[str] = _call(endpoint, api_key=api_key, timeout=10)["lines"]
        return got

    seen = fetch()
    for line in seen[-lines:] if lines > 0 else []:
        print(line)
    print(end="", flush=True)
    while follow:
        time.sleep(REFRESH_S)
        recent = fetch()
        for line in new_lines(seen, recent):
            print(line, flush=True)
        seen = recent
    return 0
