"""Command-line options of the fake backend, parsed into one frozen value."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


@dataclass(frozen=True)
class Settings:
    port: int
    host: str
    served_model_names: tuple[str, ...]
    startup_delay: float
    token_delay: float
    tokens: int
    max_model_len: int
    crash_after: int | None
    # The last stderr line of a failed start; None: start normally.
    fail_start: str | None
    worker: bool
    access_log: bool
    api_key: str | None
    gpu_memory_utilization: float

    @property
    def model_name(self) -> str:
        """The name echoed in responses and metrics, as vLLM uses its first served name."""
        return self.served_model_names[0]


def _number(
    kind: Callable[[str], float], minimum: float, maximum: float | None = None
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum:g}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}{upper}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fake_vllm",
        description="A fake vLLM OpenAI-compatible server for tests, demos and benchmarks.",
    )
    vllm = parser.add_argument_group("vLLM-compatible options")
    vllm.add_argument("--port", type=_number(int, 1, 65535), required=True)
    vllm.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, unlike vLLM)"
    )
    vllm.add_argument("--model", default="fake-model", help="default served name")
    vllm.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="names the server answers to; the first is echoed in responses (default: --model)",
    )
    vllm.add_argument(
        "--max-model-len",
        type=_number(int, 1),
        default=65536,
        help="prompt plus completion tokens above this answer 400 (default 65536)",
    )
    vllm.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    vllm.add_argument(
        "--gpu-memory-utilization",
        type=_number(float, 0.0, 1.0),
        default=0.9,
        help="accepted and logged only",
    )
    fake = parser.add_argument_group("fake behaviour")
    fake.add_argument(
        "--startup-delay",
        type=_number(float, 0.0),
        default=0.3,
        metavar="S",
        help="seconds of 'model loading' before the port is bound (default 0.3)",
    )
    fake.add_argument(
        "--token-delay",
        type=_number(float, 0.0),
        default=0.0,
        metavar="S",
        help="seconds between generated tokens (default 0)",
    )
    fake.add_argument(
        "--tokens",
        type=_number(int, 1),
        default=16,
        metavar="N",
        help="tokens generated when a request sets no max_tokens (default 16)",
    )
    fake.add_argument(
        "--crash-after",
        type=_number(int, 1),
        metavar="N",
        help="the Nth generation request kills the main process (the worker survives)",
    )
    fake.add_argument(
        "--fail-start",
        nargs="?",
        const=OOM_LINE,
        metavar="LINE",
        help="fail to start: exit 1 after the start-up delay, LINE last on stderr "
        "(default: a CUDA out-of-memory error)",
    )
    fake.add_argument(
        "--no-worker", action="store_true", help="do not start the idle worker child process"
    )
    fake.add_argument("--access-log", action="store_true", help="log every request to stdout")
    return parser


def parse_settings(argv: Sequence[str]) -> Settings:
    """Parse ``argv``; argparse exits with status 2 and a usage message on bad input."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    names: list[str] = args.served_model_name or [args.model]
    if any(not name for name in names):
        parser.error("--served-model-name: names must not be empty")
    return Settings(
        port=int(args.port),
        host=args.host,
        served_model_names=tuple(names),
        startup_delay=float(args.startup_delay),
        token_delay=float(args.token_delay),
        tokens=int(args.tokens),
        max_model_len=int(args.max_model_len),
        crash_after=None if args.crash_after is None else int(args.crash_after),
        fail_start=args.fail_start,
        worker=not args.no_worker,
        access_log=bool(args.access_log),
        api_key=args.api_key,
        gpu_memory_utilization=float(args.gpu_memory_utilization),
    )
