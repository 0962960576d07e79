"""Command-line options of the fake backend, parsed into one frozen value."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
# vLLM accepts only these LoRA ranks.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
FailMode = Literal["silent", "error"]
FAIL_MODES: tuple[FailMode, ...] = ("silent", "error")


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
    # Environment switches, read once at start as vLLM reads them.
    dev_mode: bool = False
    runtime_lora: bool = False
    sleep_delay: float = 0.0
    wake_delay: float = 0.0
    fail_sleep: FailMode | None = None
    fail_wake: FailMode | None = None
    # After this many full wakes the answers are garbled; None: never.
    garbage_after_wakes: int | None = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16

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
    _add_sleep_options(parser)
    _add_lora_options(parser)
    return parser


def _add_sleep_options(parser: argparse.ArgumentParser) -> None:
    sleep = parser.add_argument_group(
        "sleep mode (the endpoints exist only with VLLM_SERVER_DEV_MODE=1)"
    )
    sleep.add_argument(
        "--enable-sleep-mode", action="store_true", help="accepted; the endpoints need only the env"
    )
    sleep.add_argument(
        "--sleep-delay",
        type=_number(float, 0.0),
        default=0.0,
        metavar="S",
        help="seconds a /sleep takes once the engine is paused (default 0)",
    )
    sleep.add_argument(
        "--wake-delay",
        type=_number(float, 0.0),
        default=0.0,
        metavar="S",
        help="seconds a wake takes, paid by the first /wake_up after a sleep (default 0)",
    )
    sleep.add_argument(
        "--fail-sleep",
        choices=FAIL_MODES,
        help="silent: /sleep answers 200 and nothing changes; error: /sleep answers 500",
    )
    sleep.add_argument(
        "--fail-wake",
        choices=FAIL_MODES,
        help="silent: /wake_up answers 200 and nothing changes; error: /wake_up answers 500",
    )
    sleep.add_argument(
        "--garbage-after-wakes",
        type=_number(int, 1),
        metavar="N",
        help="from the Nth full wake on, every answer is garbled text",
    )


def _add_lora_options(parser: argparse.ArgumentParser) -> None:
    lora = parser.add_argument_group(
        "LoRA (the endpoints exist only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1|true)"
    )
    lora.add_argument("--enable-lora", action="store_true", help="allow adapters to load")
    lora.add_argument(
        "--max-loras",
        type=_number(int, 1),
        default=1,
        metavar="N",
        help="adapters in one batch; like vLLM, it does not limit loads (default 1)",
    )
    lora.add_argument(
        "--max-lora-rank",
        type=int,
        choices=LORA_RANKS,
        default=16,
        metavar="R",
        help=f"highest adapter rank that loads, one of {', '.join(map(str, LORA_RANKS))} "
        "(default 16)",
    )


def dev_mode_from_env(environ: Mapping[str, str]) -> bool:
    """``VLLM_SERVER_DEV_MODE`` as vLLM reads it: ``int()``, so ``true`` raises ValueError."""
    return bool(int(environ.get("VLLM_SERVER_DEV_MODE", "0")))


def runtime_lora_from_env(environ: Mapping[str, str]) -> bool:
    return environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Parse ``argv``; argparse exits with status 2 and a usage message on bad input.

    Raises ValueError for a ``VLLM_SERVER_DEV_MODE`` that is not an integer."""
    env = {} if environ is None else environ
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
        dev_mode=dev_mode_from_env(env),
        runtime_lora=runtime_lora_from_env(env),
        sleep_delay=float(args.sleep_delay),
        wake_delay=float(args.wake_delay),
        fail_sleep=args.fail_sleep,
        fail_wake=args.fail_wake,
        garbage_after_wakes=(
            None if args.garbage_after_wakes is None else int(args.garbage_after_wakes)
        ),
        enable_lora=bool(args.enable_lora),
        max_loras=int(args.max_loras),
        max_lora_rank=int(args.max_lora_rank),
    )
