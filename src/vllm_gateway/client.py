"""The terminal side: ``vllm-gateway status | load | unload | sleep | logs`` against a running
gateway."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .web.paths import name_path

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


STATE_STYLE = {"ready": "green", "starting": "yellow", "waking": "bright_cyan",
               "draining": "cyan", "sleeping": "blue", "stopping": "magenta", "failed": "red",
               "backoff": "dark_orange", "held": "bold white on red", "stopped": "dim"}
# Model columns in the order they give way when the terminal is too narrow: the first is
# dropped first. The name and the state are never dropped.
DROP_ORDER = ("pid", "port", "node", "VRAM", "last start", "queued", "last used", "GPUs",
              "in flight")
MODEL_COLUMNS = ("model", "state", "GPUs", "node", "VRAM", "in flight", "queued", "last used",
                 "last start", "port", "pid")
NATURAL = 10_000  # a width no table reaches: measuring with it gives a table's natural width


def _state_cell(m: dict[str, Any]) -> str:
    state = m["state"]
    cell = f"[{STATE_STYLE.get(state, '')}]{state}[/]"
    if state == "starting" and m.get("starting_for_s") is not None:
        cell += f" {m['starting_for_s']:.0f} s"
    elif state == "sleeping" and m.get("sleep_level"):
        cell += f" L{m['sleep_level']}"
    elif state == "backoff" and m.get("retry_in_s") is not None:
        cell += f" {m['retry_in_s']:.0f} s"
    return cell


def _last_start(m: dict[str, Any]) -> str:
    took = _secs(m.get("last_start_s"))
    wake = m.get("last_wake_s")
    return took if wake is None else f"{took}, wake {wake:.1f} s"


def _model_cells(m: dict[str, Any]) -> dict[str, str]:
    return {
        "model": escape(m["name"]), "state": _state_cell(m),
        "GPUs": ",".join(str(g) for g in m.get("gpus", [])) or "-",
        "node": escape(m.get("node") or "-"),
        "VRAM": f"{m['vram_gb']:g} GB" if m.get("vram_gb") else "-",
        "in flight": f"{m['in_flight']}/{m['max_concurrent']}",
        "queued": f"{m['queued']}/{m['max_queue']}",
        "last used": _ago(m.get("last_used")), "last start": _last_start(m),
        "port": str(m.get("port") or "-"), "pid": str(m.get("pid") or "-"),
    }


def _problem(m: dict[str, Any]) -> str | None:
    """One line under the table for a model that needs a person's attention."""
    name = escape(m["name"])
    error = str(m.get("error") or "").strip()
    first_line = escape(error.splitlines()[0]) if error else ""
    if m["state"] == "held":
        tries = m.get("failed_starts") or "too many"
        return (f"[red]{name}[/]: held after {tries} failed starts in a row; "
                f"`vllm-gateway load {name}` tries again. {first_line}").rstrip()
    if m["state"] == "backoff":
        retry = m.get("retry_in_s")
        after = f" (next try in {retry:.0f} s)" if retry is not None else ""
        return f"[dark_orange]{name}[/]: {first_line or 'start failed'}{after}"
    if m["state"] == "failed" and first_line:
        return f"[red]{name}[/]: {first_line} (the next request restarts it)"
    if m.get("wake_check_failures"):
        return (f"[yellow]{name}[/]: {m['wake_check_failures']} wake checks failed "
                "(answers after a wake differed; cold-started instead)")
    return None


def _models_table(rows: list[dict[str, str]], columns: list[str]) -> Table:
    table = Table(title="Models", title_justify="left")
    for col in columns:
        # The name never gives way: other columns shrink or go first.
        table.add_column(col, no_wrap=col == "model",
                         min_width=max((len(r["model"]) for r in rows), default=5)
                         if col == "model" else None)
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    return table


def _fitting_models_table(console: Console, rows: list[dict[str, str]], width: int) -> Table:
    columns = list(MODEL_COLUMNS)
    if all(r["node"] == "-" for r in rows):
        columns.remove("node")
    for drop in (None, *DROP_ORDER):
        if drop in columns:
            columns.remove(drop)
        table = _models_table(rows, columns)
        natural = Measurement.get(console, console.options.update_width(NATURAL), table).maximum
        if natural <= width:
            break
    return table


def render(doc: dict[str, Any], console: Console | None = None) -> Group:
    """The status document as tables fitting ``console``'s width (one of 200 if none)."""
    console = console or Console(width=200)
    gpus = Table(title="GPUs", title_justify="left")
    has_nodes = any(g.get("node") for g in doc.get("gpus", []))
    for col in ("id", *(("node",) if has_nodes else ()), "placed", "total", "driver used", ""):
        gpus.add_column(col)
    for g in doc.get("gpus", []):
        total = g["vram_gb"] or 1
        filled = max(0, min(20, round(20 * g["used_gb"] / total)))
        bar = "[cyan]" + "█" * filled + "[/][dim]" + "░" * (20 - filled) + "[/]"
        driver = "-" if g.get("driver_used_gb") is None else f"{g['driver_used_gb']:g} GB"
        node = (escape(g.get("node") or "-"),) if has_nodes else ()
        gpus.add_row(str(g["id"]), *node, f"{g['used_gb']:g} GB", f"{g['vram_gb']:g} GB",
                     driver, bar)
    models = doc.get("models", [])
    rows = [_model_cells(m) for m in models]
    parts: list[RenderableType] = [_fitting_models_table(console, rows, console.width)]
    host = doc.get("host_memory")
    if isinstance(host, dict) and (host.get("used_gb") or any(m.get("sleep") for m in models)):
        parts.insert(0, f"host RAM held by sleepers: {host.get('used_gb') or 0:g} / "
                        f"{host.get('total_gb') or 0:g} GB")
    if doc.get("gpus"):
        parts.insert(0, gpus)
    parts.extend(line for line in map(_problem, models) if line)
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
    first = render(fetch(), console)  # an unreachable gateway fails here, before any drawing
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
            first = render(fetch(), console)
    with Live(first, console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(REFRESH_S)
            try:
                live.update(render(fetch(), console))
            except ClientError as exc:
                # Keep watching through a gateway restart; say so instead of exiting.
                live.update(Text(f"{exc} (retrying)", style="red"))


def _model_url(url: str, name: str, action: str) -> str:
    try:
        return f"{url.rstrip('/')}/gateway/models/{name_path(name)}/{action}"
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def admin(url: str, action: str, name: str, api_key: str | None) -> int:
    doc = _call(_model_url(url, name, action), "POST", api_key)
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
    endpoint = _model_url(url, name, "logs") + "?" + urlencode({"lines": LOG_WINDOW})

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
