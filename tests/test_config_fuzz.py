"""Whatever a user feeds the loader, the answer is a config or a ConfigError, never a traceback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_gateway.config import ConfigError, GatewayConfig, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.yaml"

KEYS = [
    "server", "gpus", "max_loaded_models", "defaults", "models", "retry", "faults", "auth",
    "http_pool_size", "state_dir", "log_level", "log_format", "container_prefix", "host", "port",
    "command", "url", "launcher", "image", "args", "volumes", "shm_size", "ipc", "network",
    "container_port", "vram_gb", "gpu_count", "aliases", "env", "health_path", "pinned",
    "max_concurrent", "max_queue", "idle_timeout_s", "keys", "name", "key_env", "key_file", "key",
    "id", "backoff", "delay_s", "m", "auto", "*", "sleep", "sleep_vram_gb", "replicas", "min",
    "max", "gpu_ids", "node", "default", "adapters", "path", "max_lora_rank", "vram_gb_estimate",
    "host_memory_gb", "ray", "address", "namespace", "off", "ray://h:1",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 100_000),
    st.floats(),
    st.sampled_from(KEYS),
    st.text(max_size=12),
    st.sampled_from(["{port}", "{nope}", "{", "http://h:1", "a:b", "8g", "docker", "bridge"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
ENV = st.dictionaries(
    st.sampled_from([
        "GATEWAY_MAX_QUEUE_SIZE", "GATEWAY_MAX_CONCURRENT", "GATEWAY_MAX_MODELS_CONCURRENT",
        "GATEWAY_RETRY_DELAY", "TOTAL_GPU_VRAM", "ALLOWED_MODELS", "LOG_LEVEL", "ALICE_KEY",
        "VLLM_CONTAINER_PREFIX",
    ]),
    st.sampled_from(["", "0", "1", "-1", "2.5", "abc", "nan", "1e400", "m", "llama-8b,x", "debug"]),
    max_size=4,
)  # fmt: skip
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def only_config_errors(text: str, env: Mapping[str, str], base: Path) -> None:
    try:
        config = load_config(base / "fuzz.yaml", env, text=text)
    except ConfigError as error:
        assert error.errors and all(isinstance(line, str) and line for line in error.errors)
    else:
        assert isinstance(config, GatewayConfig)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), env=ENV)
def test_random_structures_raise_only_config_error(
    document: dict[str, object], env: dict[str, str], tmp_path: Path
) -> None:
    only_config_errors(yaml.safe_dump(document), env, tmp_path)


@FUZZ
@given(data=st.data(), env=ENV)
def test_mutated_example_raises_only_config_error(
    data: st.DataObject, env: dict[str, str], tmp_path: Path
) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    # Declared GPUs, so the fit checks run too.
    document["gpus"] = [{"id": 0, "vram_gb": 80}, {"id": 1, "vram_gb": 24}]
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            slots.append((node, key))
            if isinstance(child, (dict, list)):
                walk(child)

    walk(document)
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = data.draw(st.sampled_from(slots))
        parent[key] = data.draw(VALUES)
    only_config_errors(yaml.safe_dump(document), {"BOB_KEY": "b", **env}, tmp_path)


@FUZZ
@given(text=st.text(alphabet=" \n\t:-[]{},'\"#&*!|>%@`abc01.", max_size=80))
def test_random_text_raises_only_config_error(text: str, tmp_path: Path) -> None:
    only_config_errors(text, {}, tmp_path)
