"""What the configuration tests of good files and of precedence share: a minimal file,
loading text with a given environment, and one model's YAML."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from vllm_gateway.config import GatewayConfig, load_config

MINIMAL = "models:\n  m: {command: 'serve --port {port}'}\n"


def load(text: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> GatewayConfig:
    return load_config(None, env or {}, text=textwrap.dedent(text), **kwargs)


def model_yaml(settings_yaml: str, name: str = "m") -> str:
    return f"models:\n  {name}: {settings_yaml}\n"
