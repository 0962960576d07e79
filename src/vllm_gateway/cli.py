"""The ``vllm-gateway`` command: demo, serve, check-config, status, load, unload, sleep, logs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from .config import ConfigError, GatewayConfig, load_config
from .log_setup import setup_logging

DEFAULT_URL = "http://127.0.0.1:8000"
# The operators' commands, each the POST /gateway/models/NAME/<command> of the same name.
ADMIN_COMMANDS = {
    "load": "start a model now (evicting idle ones if needed)",
    "unload": "stop a model after its in-flight requests",
    "sleep": "put a ready model with sleep on to sleep now",
}


def _url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("VLLM_GATEWAY_URL", DEFAULT_URL),
                        help="the gateway's address (env VLLM_GATEWAY_URL; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_GATEWAY_API_KEY"),
                        help="an API key when auth is on (env VLLM_GATEWAY_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a gateway with simulated models (no GPU needed)")
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", type=int, default=None)
    demo.add_argument("--log-format", choices=["text", "json"], default=None)

    serve = sub.add_parser("serve", help="run the gateway with a config file")
    serve.add_argument("--config", "-c", required=True, help="the YAML config file")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-format", choices=["text", "json"], default=None)

    check = sub.add_parser("check-config", help="validate a config file without starting anything")
    check.add_argument("file")

    status = sub.add_parser("status", help="show GPUs and models as a table")
    _url_arg(status)
    status.add_argument("--watch", "-w", action="store_true",
                        help="refresh every second until Ctrl-C")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    for name, what in ADMIN_COMMANDS.items():
        p = sub.add_parser(name, help=what)
        p.add_argument("name")
        _url_arg(p)

    logs = sub.add_parser("logs", help="show a model server's recent output")
    logs.add_argument("name")
    logs.add_argument("--lines", "-n", type=int, default=100, help="how many recent lines to show")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until Ctrl-C")
    _url_arg(logs)
    return parser


def _run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when it is installed: the proxy path spends most of its time in the event loop
    and socket calls, where uvloop costs a fraction of asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _serve(config_path: str | None, text: str | None, args: argparse.Namespace,
           banner_for_demo: bool) -> int:
    try:
        config = load_config(config_path, dict(os.environ), host=args.host, port=args.port,
                             log_format=args.log_format, text=text)
    except ConfigError as err:
        print(f"vllm-gateway: invalid configuration:\n{err}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    from .serve import run_gateway

    banner = None
    if banner_for_demo:
        from .demo import demo_banner
        banner = demo_banner(config)
    try:
        _run(run_gateway(config, banner=banner))
    except OSError as exc:
        print(f"vllm-gateway: cannot listen on {config.server.host}:{config.server.port}: {exc}",
              file=sys.stderr)
        return 1
    except Exception as exc:
        from .cluster.nodes import ClusterError
        from .gpu import GpuDiscoveryError
        if isinstance(exc, (GpuDiscoveryError, ClusterError)):
            print(f"vllm-gateway: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


def check_config_main(path: str, env: Mapping[str, str]) -> tuple[int, str]:
    """``vllm-gateway check-config FILE``: exit code 0 and a summary, or 2 and the errors."""
    try:
        config = load_config(path, env)
    except ConfigError as error:
        return 2, str(error)
    return 0, "\n".join(_summary(config))


def _summary(config: GatewayConfig) -> list[str]:
    count = len(config.models)
    names = ", ".join(config.models)
    lines = [f"OK: {count} model{'s' if count != 1 else ''} ({names})"]
    adapters = [f"{name} on {model.name}" for model in config.models.values()
                for name in model.adapters]
    if adapters:
        lines.append(f"adapters: {', '.join(adapters)}")
    if config.gpus in ("auto", "ray"):
        where = "the GPUs" if config.gpus == "auto" else "the Ray cluster's GPUs"
        lines.append(f"note: gpus: {config.gpus}; model sizes are checked against {where} "
                     f"at start")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.config, None, args, banner_for_demo=False)
    if args.command == "demo":
        from .demo import demo_config_text
        return _serve(None, demo_config_text(), args, banner_for_demo=True)
    if args.command == "check-config":
        code, message = check_config_main(args.file, dict(os.environ))
        print(message, file=sys.stdout if code == 0 else sys.stderr)
        return code
    from . import client
    try:
        if args.command == "status":
            return client.status(args.url, watch=args.watch, raw=args.json, api_key=args.api_key)
        if args.command in ADMIN_COMMANDS:
            return client.admin(args.url, args.command, args.name, args.api_key)
        if args.command == "logs":
            return client.logs(args.url, args.name, args.lines, args.follow, args.api_key)
    except client.ClientError as exc:
        print(f"vllm-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python from complaining
        # about the unflushed rest at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
