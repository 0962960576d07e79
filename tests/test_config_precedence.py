"""Configuration precedence: arguments beat the file; the environment beats the file's keys
and defaults, which beat the built-in defaults, and a model's own setting beats the
environment; each bad environment value is named; TOTAL_GPU_VRAM and ALLOWED_MODELS.
Good files are in test_config_good_files.py, mistakes in files in test_config_errors.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from config_helpers import MINIMAL, load, model_yaml

from vllm_gateway.config import ConfigError, GpuSpec


def errors_of(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    return caught.value.errors


# --- precedence ------------------------------------------------------------------


def test_arguments_beat_the_file() -> None:
    text = "server: {host: 0.0.0.0, port: 9000}\nlog_format: text\n" + MINIMAL
    config = load(text, host="127.0.0.2", port=0, log_format="json")
    assert (config.server.host, config.server.port, config.log_format) == ("127.0.0.2", 0, "json")
    config = load(text)
    assert (config.server.host, config.server.port, config.log_format) == ("0.0.0.0", 9000, "text")


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("GATEWAY_MAX_CONCURRENT", "7", "max_concurrent", 7),
        ("GATEWAY_MAX_QUEUE_SIZE", "0", "max_queue", 0),
        ("VLLM_INACTIVITY_TIMEOUT", "0", "idle_timeout_s", 0),
        ("VLLM_REQUEST_TIMEOUT", "12.5", "request_timeout_s", 12.5),
    ],
)
def test_model_setting_precedence(variable: str, value: str, field: str, expected: float) -> None:
    text = (
        f"defaults: {{{field}: 3}}\n"
        "models:\n"
        "  plain: {command: serve}\n"
        f"  own: {{command: serve, {field}: 5}}\n"
    )
    # file defaults beat the built-in default
    config = load(text)
    assert getattr(config.models["plain"], field) == 3
    # the environment beats the file's defaults...
    config = load(text, {variable: value})
    assert getattr(config.models["plain"], field) == expected
    # ...but a model's own setting beats the environment
    assert getattr(config.models["own"], field) == 5


def test_startup_timeout_and_launcher_come_from_defaults() -> None:
    config = load("defaults: {startup_timeout_s: 42}\n" + MINIMAL)
    assert config.models["m"].startup_timeout_s == 42


@pytest.mark.parametrize(
    ("variable", "value", "file_yaml", "read", "from_file", "from_env"),
    [
        (
            "GATEWAY_MAX_MODELS_CONCURRENT",
            "5",
            "max_loaded_models: 2",
            lambda c: c.max_loaded_models,
            2,
            5,
        ),
        ("GATEWAY_HTTP_POOL_SIZE", "64", "http_pool_size: 10", lambda c: c.http_pool_size, 10, 64),
        (
            "GATEWAY_MAX_RETRIES",
            "0",
            "retry: {max_retries: 4}",
            lambda c: c.retry.max_retries,
            4,
            0,
        ),
        ("GATEWAY_RETRY_DELAY", "0.25", "retry: {delay_s: 2}", lambda c: c.retry.delay_s, 2, 0.25),
        ("GATEWAY_RETRY_BACKOFF", "3", "retry: {backoff: 2}", lambda c: c.retry.backoff, 2, 3),
        ("LOG_LEVEL", "debug", "log_level: warning", lambda c: c.log_level, "WARNING", "DEBUG"),
        (
            "VLLM_CONTAINER_PREFIX",
            "gw-test",
            "container_prefix: mine",
            lambda c: c.container_prefix,
            "mine",
            "gw-test",
        ),
    ],
)
def test_environment_beats_top_level_keys(
    variable: str, value: str, file_yaml: str, read: Any, from_file: object, from_env: object
) -> None:
    assert read(load(file_yaml + "\n" + MINIMAL)) == from_file
    assert read(load(file_yaml + "\n" + MINIMAL, {variable: value})) == from_env


def test_environment_beats_builtin_defaults() -> None:
    config = load(
        MINIMAL,
        {
            "GATEWAY_MAX_MODELS_CONCURRENT": "2",
            "GATEWAY_HTTP_POOL_SIZE": "9",
            "LOG_LEVEL": "Error",
            "VLLM_CONTAINER_PREFIX": "p",
        },
    )
    assert (config.max_loaded_models, config.http_pool_size) == (2, 9)
    assert (config.log_level, config.container_prefix) == ("ERROR", "p")
    assert load(MINIMAL).container_prefix == "vllm"


def test_empty_variables_count_as_unset() -> None:
    config = load(MINIMAL, {"GATEWAY_MAX_CONCURRENT": "", "ALLOWED_MODELS": " ", "LOG_LEVEL": ""})
    assert config.models["m"].max_concurrent == 50 and config.log_level == "INFO"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_MAX_CONCURRENT", "abc", "expected a positive integer, got 'abc'"),
        ("GATEWAY_MAX_CONCURRENT", "0", "expected a positive integer, got '0'"),
        ("GATEWAY_MAX_QUEUE_SIZE", "-1", "expected an integer >= 0, got '-1'"),
        ("GATEWAY_MAX_MODELS_CONCURRENT", "1.5", "expected a positive integer, got '1.5'"),
        ("GATEWAY_MAX_RETRIES", "x", "expected an integer >= 0, got 'x'"),
        ("GATEWAY_RETRY_DELAY", "-1", "expected a number >= 0, got '-1'"),
        ("GATEWAY_RETRY_BACKOFF", "0.5", "expected a number >= 1, got '0.5'"),
        ("GATEWAY_HTTP_POOL_SIZE", "0", "expected a positive integer, got '0'"),
        ("VLLM_INACTIVITY_TIMEOUT", "soon", "expected a number >= 0, got 'soon'"),
        ("VLLM_REQUEST_TIMEOUT", "nan", "expected a number >= 0, got 'nan'"),
        ("VLLM_CONTAINER_PREFIX", "bad/name", "expected letters, digits"),
        ("TOTAL_GPU_VRAM", "0", "expected a number > 0, got '0'"),
        ("ALLOWED_MODELS", ",,", "lists no model names, got ',,'"),
        ("LOG_LEVEL", "verbose", "expected one of DEBUG, INFO, WARNING, ERROR, got 'verbose'"),
    ],
)
def test_bad_environment_variable_is_named(variable: str, value: str, message: str) -> None:
    errors = errors_of(MINIMAL, {variable: value})
    assert len(errors) == 1 and errors[0].startswith(f"{variable}: {message}"), errors


# --- TOTAL_GPU_VRAM and ALLOWED_MODELS ------------------------------------------------


def test_total_gpu_vram_declares_one_gpu() -> None:
    assert load(MINIMAL, {"TOTAL_GPU_VRAM": "24"}).gpus == (GpuSpec(0, 24.0),)
    assert load(MINIMAL).gpus is None


def test_file_gpus_win_over_total_gpu_vram() -> None:
    assert load("gpus: [{id: 3, vram_gb: 40}]\n" + MINIMAL, {"TOTAL_GPU_VRAM": "24"}).gpus == (
        GpuSpec(3, 40),
    )
    assert load("gpus: auto\n" + MINIMAL, {"TOTAL_GPU_VRAM": "24"}).gpus == "auto"


def test_total_gpu_vram_is_used_for_the_fit_check() -> None:
    errors = errors_of(model_yaml("{command: x, vram_gb: 30}", "big"), {"TOTAL_GPU_VRAM": "24"})
    assert errors == ["models.big.vram_gb: 30 GB does not fit on any GPU (largest: 24 GB)"]


def test_allowed_models_drops_the_others() -> None:
    text = "models:\n  a: {command: x}\n  b: {command: y}\n  c: {url: 'http://h:1'}\n"
    config = load(text, {"ALLOWED_MODELS": " c, a "})
    assert list(config.models) == ["a", "c"]


def test_allowed_models_names_unknown_and_alias_entries() -> None:
    text = "models:\n  a: {command: x, aliases: [al]}\n"
    errors = errors_of(text, {"ALLOWED_MODELS": "a,zz,al"})
    assert errors == [
        "ALLOWED_MODELS: 'zz' is not a configured model (known: a)",
        "ALLOWED_MODELS: 'al' is an alias; list the model name 'a' instead",
    ]
