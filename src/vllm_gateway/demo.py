"""The embedded demo: three simulated models on one declared 24 GB GPU, so a swap shows."""

from __future__ import annotations

import json
import sys

from .config import GatewayConfig

_MODELS = {
    "demo-small": {"vram_gb": 8, "aliases": ["small", "gpt-4o-mini"], "delay": 0.02},
    "demo-medium": {"vram_gb": 12, "aliases": ["medium"], "delay": 0.03},
    "demo-large": {"vram_gb": 16, "aliases": ["large", "gpt-4o"], "delay": 0.05},
}


def demo_config_text() -> str:
    lines = [
        "server: {host: 127.0.0.1, port: 8000, shutdown_timeout_s: 10}",
        "gpus: [{id: 0, vram_gb: 24}]",
        "defaults: {idle_timeout_s: 300, startup_timeout_s: 60, max_concurrent: 16, max_queue: 64}",
        "models:",
    ]
    for name, spec in _MODELS.items():
        command = [sys.executable, "-m", "fake_vllm", "--port", "{port}",
                   "--served-model-name", "{name}", "--startup-delay", "1.5",
                   "--token-delay", str(spec["delay"])]
        lines += [
            f"  {name}:",
            f"    command: {json.dumps(command)}",
            f"    vram_gb: {spec['vram_gb']}",
            f"    aliases: {json.dumps(spec['aliases'])}",
        ]
    return "\n".join(lines) + "\n"


def demo_banner(config: GatewayConfig) -> str:
    url = f"http://{config.server.host}:{config.server.port}"
    body = '{"model": "demo-small", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    return (
        f"\nvllm-gateway demo is up: {url}/v1 (dashboard: {url}/)\n"
        f"Models: {', '.join(config.models)} (simulated; one declared 24 GB GPU, so they swap)\n"
        "Try:\n"
        f"  curl -N {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
        f"  vllm-gateway status --url {url}\n"
    )
