"""Validation of request bodies, and the plan of what a request will generate.

Errors are raised as :class:`ApiError`, which carries vLLM's error shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from .options import Settings

FinishReason = Literal["stop", "length", "abort"]


class ApiError(Exception):
    """An OpenAI-style error answer: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        err_type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type or error_type(status)
        self.param = param

    def body(self) -> bytes:
        error: dict[str, object] = {
            "message": self.message,
            "type": self.err_type,
            "param": self.param,
            "code": self.status,
        }
        return json.dumps({"error": error}).encode()


def validation_error(loc: str, kind: str, msg: str, value: object) -> ApiError:
    """A 400 in the shape FastAPI's request validation gives inside vLLM."""
    detail = {"type": kind, "loc": loc, "msg": msg, "input": value}
    return ApiError(f"1 validation error: {detail!r}", 400, "Bad Request", param=loc)


def error_type(status: int) -> str:
    """vLLM's error type names: 400 -> BadRequestError, 503 -> ServiceUnavailableError."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    words = "".join(c if c.isalnum() else " " for c in phrase).split()
    name = "".join(w[:1].upper() + w[1:] for w in words)
    return name if name.endswith("Error") else name + "Error"


@dataclass(frozen=True)
class Overrides:
    """The optional ``"fake"`` field of a request body."""

    token_delay: float | None = None
    stall_after: int | None = None
    tokens: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class Plan:
    """What one generation request will produce."""

    stream: bool
    include_usage: bool
    prompt_tokens: int
    tokens: int
    finish_reason: FinishReason
    token_delay: float
    stall_after: int | None
    # The adapter answering, else empty: the base model answers.
    model: str = ""
    # Set in every token's text: an adapter's tag, or the mark of a garbled engine.
    voice: str = ""


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    return body


def _int_field(where: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(f"{where} must be an integer >= {minimum}, got {value!r}", param=where)
    return value


def parse_overrides(body: dict[str, Any]) -> Overrides:
    fake = body.get("fake")
    if fake is None:
        return Overrides()
    if not isinstance(fake, dict):
        raise ApiError("fake must be an object", param="fake")
    unknown = set(fake) - {"token_delay", "stall_after", "tokens", "status"}
    if unknown:
        raise ApiError(f"fake: unknown fields {sorted(unknown)}", param="fake")
    delay = fake.get("token_delay")
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0
    ):
        raise ApiError(f"fake.token_delay must be a number >= 0, got {delay!r}", param="fake")
    stall = fake.get("stall_after")
    tokens = fake.get("tokens")
    status = fake.get("status")
    if status is not None:
        status = _int_field("fake.status", status, 400)
        if status > 599:
            raise ApiError(f"fake.status must be 400..599, got {status}", param="fake")
    return Overrides(
        token_delay=None if delay is None else float(delay),
        stall_after=None if stall is None else _int_field("fake.stall_after", stall, 0),
        tokens=None if tokens is None else _int_field("fake.tokens", tokens, 0),
        status=status,
    )


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    """A stand-in token count: the words of every message's text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages: a non-empty list is required", param="messages")
    count = 0
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError("messages: each message must be an object", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            count += sum(_words(part.get("text")) for part in content if isinstance(part, dict))
        else:
            count += _words(content)
    return max(count, 1)


def completion_prompt_tokens(body: dict[str, Any]) -> int:
    """Words of a text prompt, or the length of a token-id prompt."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return max(_words(prompt), 1)
    if isinstance(prompt, list) and prompt:
        count = 0
        for item in prompt:
            if isinstance(item, str):
                count += _words(item)
            elif isinstance(item, list):
                count += len(item)
            elif isinstance(item, int):
                count += 1
        return max(count, 1)
    raise ApiError("prompt: a string or a non-empty list is required", param="prompt")


def plan_generation(
    body: dict[str, Any], chat: bool, prompt_tokens: int, fake: Overrides, settings: Settings
) -> Plan:
    stream = bool(body.get("stream", False))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError("Stream options can only be defined when `stream=True`.")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    limit = body.get("max_completion_tokens") if chat else None
    if limit is None:
        limit = body.get("max_tokens")
    max_tokens = None if limit is None else _int_field("max_tokens", limit, 1)
    tokens = settings.tokens if max_tokens is None else max_tokens
    if fake.tokens is not None:
        tokens = fake.tokens if max_tokens is None else min(fake.tokens, max_tokens)
    if prompt_tokens + tokens > settings.max_model_len:
        where = "messages" if chat else "prompt"
        raise ApiError(
            f"This model's maximum context length is {settings.max_model_len} tokens. "
            f"However, you requested {prompt_tokens + tokens} tokens ({prompt_tokens} in "
            f"the {where}, {tokens} in the completion). Please reduce the length of the "
            f"{where} or completion."
        )
    reason: FinishReason = "length" if max_tokens is not None and tokens >= max_tokens else "stop"
    return Plan(
        stream=stream,
        include_usage=include_usage,
        prompt_tokens=prompt_tokens,
        tokens=tokens,
        finish_reason=reason,
        token_delay=settings.token_delay if fake.token_delay is None else fake.token_delay,
        stall_after=fake.stall_after,
    )


def embedding_inputs(body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts to embed (token-id inputs as their JSON text) and their token count."""
    value = body.get("input")
    items: list[object] = value if isinstance(value, list) else [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]
    texts: list[str] = []
    tokens = 0
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            tokens += max(_words(item), 1)
        elif isinstance(item, list) and all(isinstance(v, int) for v in item):
            texts.append(json.dumps(item))
            tokens += len(item)
        else:
            raise ApiError(
                "input: a string, a list of strings or token ids is required", param="input"
            )
    if not texts:
        raise ApiError("input must not be empty", param="input")
    return texts, tokens
