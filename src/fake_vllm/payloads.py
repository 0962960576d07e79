"""Response bodies and SSE events in vLLM's shapes.

Stream events are built from string templates rather than ``json.dumps`` per
chunk: the fake is also the benchmark upstream, so its cost per chunk must stay
far below a gateway's.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from .parsing import Plan

DONE = b"data: [DONE]\n\n"
EMBEDDING_DIM = 8


def token_text(index: int, voice: str = "") -> str:
    """The text of one token; ``voice`` sets an adapter's or a garbled engine's apart."""
    return f" {voice}tok{index}"


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "total_tokens": plan.prompt_tokens + plan.tokens,
        "completion_tokens": plan.tokens,
    }


@dataclass(frozen=True)
class Event:
    data: bytes
    # Token events are the ones paced by the token delay.
    is_token: bool


class Payloads:
    """Everything that depends only on the served name is computed once here."""

    def __init__(self, names: tuple[str, ...], max_model_len: int) -> None:
        self.model_name = names[0]
        self._model_json = json.dumps(self.model_name)
        created = int(time.time())
        self._cards: list[dict[str, object]] = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": max_model_len,
            }
            for name in names
        ]
        self.models_body = self.models_with([])

    def models_with(self, adapters: list[dict[str, object]]) -> bytes:
        """The ``/v1/models`` body: the base's names, then the loaded adapters."""
        return _dumps({"object": "list", "data": [*self._cards, *adapters]})

    def _model(self, plan: Plan) -> str:
        return plan.model or self.model_name

    def chat_body(self, plan: Plan) -> bytes:
        text = "".join(token_text(i, plan.voice) for i in range(plan.tokens))
        return _dumps(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self._model(plan),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": _usage(plan),
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            }
        )

    def completion_body(self, plan: Plan) -> bytes:
        text = "".join(token_text(i, plan.voice) for i in range(plan.tokens))
        return _dumps(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self._model(plan),
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                        "prompt_logprobs": None,
                    }
                ],
                "usage": _usage(plan),
                "kv_transfer_params": None,
            }
        )

    def _stream_head(self, plan: Plan, chat: bool) -> str:
        kind = "chat.completion.chunk" if chat else "text_completion"
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        model = json.dumps(plan.model) if plan.model else self._model_json
        return (
            f'data: {{"id":"{rid}","object":"{kind}","created":{int(time.time())},'
            f'"model":{model},"choices":['
        )

    def abort_events(self, plan: Plan, chat: bool) -> bytes:
        """The end of a stream that a sleep aborted: an empty last chunk, then [DONE]."""
        head = self._stream_head(plan, chat)
        body = '"delta":{"content":""}' if chat else '"text":""'
        return (
            f'{head}{{"index":0,{body},"logprobs":null,"finish_reason":"abort",'
            f'"stop_reason":null}}]}}\n\n'
        ).encode() + DONE

    def stream_events(self, plan: Plan, chat: bool) -> Iterator[Event]:
        """Every SSE event of a stream, ``data: [DONE]`` last."""
        head = self._stream_head(plan, chat)
        if chat:
            yield Event(
                f'{head}{{"index":0,"delta":{{"role":"assistant","content":""}},'
                f'"logprobs":null,"finish_reason":null}}]}}\n\n'.encode(),
                False,
            )
            open_text, close_text = '{"index":0,"delta":{"content":"', '"},"logprobs":null'
        else:
            open_text, close_text = '{"index":0,"text":"', '","logprobs":null'
        middle = f'{close_text},"finish_reason":null}}]}}\n\n'
        last = plan.tokens - 1
        for i in range(last):
            yield Event(f"{head}{open_text}{token_text(i, plan.voice)}{middle}".encode(), True)
        text = token_text(last, plan.voice) if last >= 0 else ""
        yield Event(
            f'{head}{open_text}{text}{close_text},"finish_reason":"{plan.finish_reason}",'
            f'"stop_reason":null}}]}}\n\n'.encode(),
            last >= 0,
        )
        if plan.include_usage:
            yield Event(head.encode() + b'],"usage":' + _dumps(_usage(plan)) + b"}\n\n", False)
        yield Event(DONE, False)

    @staticmethod
    def stream_event_count(plan: Plan, chat: bool) -> int:
        return (1 if chat else 0) + max(plan.tokens, 1) + (1 if plan.include_usage else 0) + 1

    def embeddings_body(self, inputs: list[str], prompt_tokens: int) -> bytes:
        return _dumps(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": self.model_name,
                "data": [
                    {"index": i, "object": "embedding", "embedding": embedding(text)}
                    for i, text in enumerate(inputs)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens,
                    "completion_tokens": 0,
                },
            }
        )


def embedding(text: str) -> list[float]:
    """A deterministic unit vector derived from a hash of the text."""
    digest = hashlib.blake2b(text.encode(), digest_size=2 * EMBEDDING_DIM).digest()
    raw = [
        int.from_bytes(digest[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, len(digest), 2)
    ]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in raw]
