"""The terminal side: ``vllm-gateway status | load | unload | logs`` against a running gateway."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


class ClientError(Exception):
    pass


def _call(url: str, method: str = "GET", api_key: str | None = None, timeout: float = 1900) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ClientError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"cannot reach the gateway at {url}: {exc}") from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0.0, time.time() - ts)
    if secs < 90:
        return f"{secs:.0f} s ago"
    if secs < 5400:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"


STATE_STYLE = {"ready": "green", "starting": "yellow", "stopping": "magenta", "failed": "red",
               "stopped": "dim"}


def render(doc: dict[str, Any]) -> Group:
    gpus = Table(title="GPUs", title_justify="left")
    for col in ("id", "placed", "total", "driver used", ""):
        gpus.add_column(col)
    for g in doc.get("gpus", []):
        total = g["vram_gb"] or 1
        filled = int(round(20 * g["used_gb"] / total))
        bar = "[cyan]" + "█" * filled + "[/][dim]" + "░" * (20 - filled) + "[/]"
        driver = "-" if g.get("driver_used_gb") is None else f"{g['driver_used_gb']:g} GB"
        gpus.add_row(str(g["id"]), f"{g['used_gb']:g} GB", f"{g['vram_gb']:g} GB", driver, bar)
    models = Table(title="Models", title_justify="left")
    for col in ("model", "state", "GPUs", "VRAM", "in flight", "queued", "last used", "port", "pid"):
        models.add_column(col)
    for m in doc.get("models", []):
        style = STATE_STYLE.get(m["state"], "")
        state = f"[{style}]{m['state']}[/]"
        if m.get("starting_for_s") is not None:
            state += f" ({m['starting_for_s']:.0f} s)"
        models.add_row(
            m["name"], state, ",".join(str(g) for g in m.get("gpus", [])) or "-",
            f"{m['vram_gb']:g} GB" if m.get("vram_gb") else "-",
            f"{m['in_flight']}/{m['max_concurrent']}", f"{m['queued']}/{m['max_queue']}",
            _ago(m.get("last_used")), str(m.get("port") or "-"), str(m.get("pid") or "-"))
    parts: list[Any] = [models]
    if doc.get("gpus"):
        parts.insert(0, gpus)
    return Group(*parts)


def status(url: str, watch: bool = False, raw: bool = False) -> int:
    endpoint = url.rstrip("/") + "/gateway/status"
    if raw:
        print(json.dumps(_call(endpoint, timeout=10), indent=2))
        return 0
    console = Console()
    if not watch:
        console.print(render(_call(endpoint, timeout=10)))
        return 0
    with Live(render(_call(endpoint, timeout=10)), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(1.0)
            live.update(render(_call(endpoint, timeout=10)))


def admin(url: str, action: str, name: str, api_key: str | None) -> int:
    doc = _call(f"{url.rstrip('/')}/gateway/models/{name}/{action}", "POST", api_key)
    print(f"{doc['name']}: {doc['state']}")
    return 0


def logs(url: str, name: str, lines: int, follow: bool) -> int:
    endpoint = f"{url.rstrip('/')}/gateway/models/{name}/logs?lines="
    seen = _call(endpoint + str(lines), timeout=10)["lines"]
    for line in seen:
        print(line)
    while follow:
        time.sleep(1.0)
        recent = _call(endpoint + "1000", timeout=10)["lines"]
        # Print what follows the last line already shown.
        start = 0
        if seen:
            for i in range(len(recent) - 1, -1, -1):
                if recent[i] == seen[-1]:
                    start = i + 1
                    break
        for line in recent[start:]:
            print(line, flush=True)
        if recent:
            seen = recent
    return 0
