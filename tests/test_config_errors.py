"""Configuration mistakes: each is reported with the key path or variable it concerns."""

from __future__ import annotations

import pickle
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from vllm_gateway.config import ConfigError, load_config

MINIMAL = "models:\n  m: {command: 'serve --port {port}'}\n"
AUTH_BASE = MINIMAL + "auth:\n  keys:\n"
NEEDS_A_WAY = (
    "needs command (a server to start), url (a server already running) "
    "or launcher: docker with image"
)


def errors_of(text: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env or {}, text=textwrap.dedent(text), **kwargs)
    return caught.value.errors


def model_yaml(settings_yaml: str, name: str = "m") -> str:
    return f"models:\n  {name}: {settings_yaml}\n"


def docker_yaml(extra: str) -> str:
    return model_yaml("{launcher: docker, image: i, " + extra + "}")


# Each case: the file, and how the first matching error line starts.
KEY_PATH_CASES = [
    (model_yaml("{command: x, vram_gb: 0}", "llama-8b"), "models.llama-8b.vram_gb: must be > 0"),
    (model_yaml("{command: x, vram_gb: -3}"), "models.m.vram_gb: must be > 0, got -3"),
    (
        model_yaml("{command: x, vram_gb: lots}"),
        "models.m.vram_gb: expected a number > 0, got 'lots'",
    ),
    (
        "defaults: {max_queue: x}\n" + MINIMAL,
        "defaults.max_queue: expected an integer >= 0, got 'x'",
    ),
    ("defaults: {max_concurrent: 0}\n" + MINIMAL, "defaults.max_concurrent: must be >= 1, got 0"),
    ("defaults: {idle_timeout_s: -1}\n" + MINIMAL, "defaults.idle_timeout_s: must be >= 0"),
    (
        "defaults: {launcher: podman}\n" + MINIMAL,
        "defaults.launcher: expected 'subprocess', 'docker' or 'ray', got 'podman'",
    ),
    (model_yaml("{command: x, gpu_count: 0}"), "models.m.gpu_count: must be >= 1, got 0"),
    (
        model_yaml("{command: x, max_concurrent: true}"),
        "models.m.max_concurrent: expected a positive integer, got true",
    ),
    (
        model_yaml("{command: x, startup_timeout_s: .inf}"),
        "models.m.startup_timeout_s: expected a finite number",
    ),
    (model_yaml("{command: x, pinned: maybe}"), "models.m.pinned: expected true or false"),
    (model_yaml("{command: x, health_path: health}"), "models.m.health_path: must start with '/'"),
    (model_yaml("{command: x, env: {A: [1]}}"), "models.m.env.A: expected a string"),
    (model_yaml("{command: ''}"), "models.m.command: must not be empty"),
    (model_yaml('{command: "serve \'open"}'), "models.m.command: cannot split into arguments"),
    (model_yaml("{command: [serve, {a: 1}]}"), "models.m.command[1]: expected a string"),
    (
        model_yaml("{command: 'serve --model {model}'}"),
        "models.m.command: unknown placeholder '{model}'",
    ),
    (
        model_yaml("{command: 'serve --port {port:d}'}"),
        "models.m.command: placeholder {port} takes no format spec",
    ),
    (model_yaml("{command: 'serve {'}"), "models.m.command: bad braces"),
    (docker_yaml("args: ['{gpu}']"), "models.m.args: unknown placeholder '{gpu}'"),
    (model_yaml("{url: 'ftp://h:1'}"), "models.m.url: expected http(s)://host:port"),
    (model_yaml("{url: 'http://h'}"), "models.m.url: expected http(s)://host:port"),
    (model_yaml("{url: 'http://h:1/v1'}"), "models.m.url: expected http(s)://host:port"),
    (model_yaml("{url: 'http://h:1', vram_gb: 3}"), "models.m.vram_gb: not used with url"),
    (
        model_yaml("{command: x, url: 'http://h:1'}"),
        "models.m: give only one of command, url or image",
    ),
    (model_yaml("{vram_gb: 3}"), "models.m: needs command"),
    (model_yaml("{command: x, image: y}"), "models.m: give only one of command, url or image"),
    (
        model_yaml("{command: x, volumes: ['/a:/b']}"),
        "models.m.volumes: only used with launcher: docker",
    ),
    (model_yaml("{launcher: docker, args: [x]}"), "models.m: launcher: docker needs image"),
    (docker_yaml("volumes: [nope]"), "models.m.volumes[0]: expected host:container"),
    (docker_yaml("network: overlay"), "models.m.network: expected 'host' or 'bridge'"),
    (docker_yaml("container_port: 80"), "models.m.container_port: only used with network: bridge"),
    (docker_yaml("shm_size: lots"), "models.m.shm_size: expected a size"),
    (docker_yaml("ipc: shared"), "models.m.ipc: expected host"),
    (
        model_yaml("{command: x}", "'bad name'"),
        "models: model name 'bad name' must not contain whitespace",
    ),
    (model_yaml("{command: x}", "7"), "models.7: a model name must be a string"),
    (model_yaml("null"), "models.m: expected a mapping of settings, got null"),
    ("models: {}\n", "models: at least one model is required"),
    ("models: [a]\n", "models: expected a mapping of model names to settings, got a list"),
    ("server: {port: 70000}\n" + MINIMAL, "server.port: must be from 0 to 65535, got 70000"),
    ("server: {max_body_mb: 0}\n" + MINIMAL, "server.max_body_mb: must be > 0"),
    ("server: [1]\n" + MINIMAL, "server: expected a mapping, got a list"),
    ("max_loaded_models: 0\n" + MINIMAL, "max_loaded_models: must be >= 1, got 0"),
    ("http_pool_size: many\n" + MINIMAL, "http_pool_size: expected a positive integer"),
    ("retry: {backoff: 0.5}\n" + MINIMAL, "retry.backoff: must be >= 1, got 0.5"),
    ("faults: {health_interval_s: 0}\n" + MINIMAL, "faults.health_interval_s: must be > 0"),
    (
        "faults: {start_backoff_s: 9, start_backoff_max_s: 3}\n" + MINIMAL,
        "faults.start_backoff_max_s: must be >= faults.start_backoff_s (9), got 3",
    ),
    ("gpus: all\n" + MINIMAL, "gpus: expected auto or a list"),
    ("gpus: [{id: 0}]\n" + MINIMAL, "gpus[0]: needs both id and vram_gb"),
    (
        "gpus: [{id: 0, vram_gb: 8}, {id: 0, vram_gb: 8}]\n" + MINIMAL,
        "gpus[1].id: GPU 0 is listed twice",
    ),
    ("gpus: [{id: -1, vram_gb: 8}]\n" + MINIMAL, "gpus[0].id: must be >= 0"),
    ("log_level: loud\n" + MINIMAL, "log_level: expected one of DEBUG"),
    ("log_format: xml\n" + MINIMAL, "log_format: expected 'text' or 'json', got 'xml'"),
    ("state_dir: ''\n" + MINIMAL, "state_dir: must not be empty"),
]


@pytest.mark.parametrize(("text", "message"), KEY_PATH_CASES)
def test_error_names_the_key_path(text: str, message: str) -> None:
    errors = errors_of(text)
    assert any(error.startswith(message) for error in errors), errors


def test_bad_arguments_are_named() -> None:
    errors = errors_of(MINIMAL, host="", port=-1, log_format="xml")
    assert errors == [
        "--host: must not be empty",
        "--port: must be from 0 to 65535, got -1",
        "--log-format: expected 'text' or 'json', got 'xml'",
    ]


def test_model_too_big_for_every_gpu() -> None:
    text = "gpus: [{id: 0, vram_gb: 80}, {id: 1, vram_gb: 40}]\n" + model_yaml(
        "{command: x, vram_gb: 120}", "big"
    )
    assert errors_of(text) == [
        "models.big.vram_gb: 120 GB does not fit on any GPU (largest: 80 GB)"
    ]


def test_model_needing_more_gpus_than_declared() -> None:
    text = "gpus: [{id: 0, vram_gb: 80}]\n" + model_yaml("{command: x, gpu_count: 2}", "tp")
    assert errors_of(text) == ["models.tp.gpu_count: needs 2 GPUs but only 1 is declared"]
    text = "gpus: [{id: 0, vram_gb: 80}, {id: 1, vram_gb: 24}]\n" + model_yaml(
        "{command: x, gpu_count: 2, vram_gb: 40}", "tp"
    )
    assert errors_of(text) == ["models.tp.vram_gb: 40 GB fits on only 1 GPU(s) but gpu_count is 2"]


def test_aliases_must_be_unique() -> None:
    text = (
        "models:\n"
        "  a: {command: x, aliases: [shared, b, a]}\n"
        "  b: {command: y, aliases: [shared, twice, twice]}\n"
    )
    assert errors_of(text) == [
        "models.a.aliases: 'b' is the name of another model",
        "models.a.aliases: 'a' is the model's own name",
        "models.b.aliases: 'shared' is already an alias of models.a",
        "models.b.aliases: 'twice' is listed twice",
    ]


def test_all_errors_are_collected_at_once() -> None:
    text = """
        modles: {}
        server: {port: x}
        defaults: {max_queue: -1}
        models:
          a: {comand: serve}
          b: {command: serve, vram_gb: 0}
        """
    errors = errors_of(text, {"GATEWAY_MAX_CONCURRENT": "abc"})
    assert errors == [
        "top level: unknown key 'modles' (did you mean 'models'?)",
        "GATEWAY_MAX_CONCURRENT: expected a positive integer, got 'abc'",
        "defaults.max_queue: must be >= 0, got -1",
        "models.a: unknown key 'comand' (did you mean 'command'?)",
        f"models.a: {NEEDS_A_WAY}",
        "models.b.vram_gb: must be > 0, got 0",
        "server.port: expected an integer from 0 to 65535, got 'x'",
    ]


def test_unknown_key_suggestion_only_when_close() -> None:
    errors = errors_of(model_yaml("{command: x, vram: 3}"))
    assert "models.m: unknown key 'vram' (did you mean 'vram_gb'?)" in errors
    assert "models.m: unknown key 'flavour'" in errors_of(model_yaml("{command: x, flavour: 3}"))
    assert errors_of("retry: {retries: 3}\n" + MINIMAL) == [
        "retry: unknown key 'retries' (did you mean 'max_retries'?)"
    ]


def test_config_error_text_and_pickling() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert str(error) == "a: one\nb: two" and error.errors == ["a: one", "b: two"]
    copied = pickle.loads(pickle.dumps(error))
    assert copied.errors == error.errors and str(copied) == str(error)


# --- the file itself -------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "gateway.yaml"), {})
    assert caught.value.errors == [f"{tmp_path / 'gateway.yaml'}: no such file"]


def test_directory_and_non_utf8_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})
    (tmp_path / "bin.yaml").write_bytes(b"models: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.yaml", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "config: empty configuration"),
        ("# only a comment\n", "config: empty configuration"),
        ("- a\n- b\n", "config: expected a mapping of settings at the top level, got a list"),
        ("just text\n", "config: expected a mapping of settings at the top level, got 'just text'"),
        ("models:\n  m: {command: x\n", "config: invalid YAML at line 3, column 1"),
        ("models:\n\tm: 1\n", "config: invalid YAML at line 2, column 1"),
        (
            "models:\n  m: {command: x}\n  m: {command: y}\n",
            "config: invalid YAML at line 3, column 3: found duplicate key 'm'",
        ),
        ("a: 1\n---\nb: 2\n", "config: invalid YAML at line 2"),
    ],
)
def test_unreadable_documents(text: str, message: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].startswith(message), errors


# --- auth -------------------------------------------------------------------------------


def test_key_env_unset_names_the_variable() -> None:
    errors = errors_of(AUTH_BASE + "    - {name: a, key_env: ALICE_KEY}\n")
    assert errors == ["ALICE_KEY: is not set (named by auth.keys[0].key_env)"]
    errors = errors_of(AUTH_BASE + "    - {name: a, key_env: ALICE_KEY}\n", {"ALICE_KEY": " "})
    assert errors == ["ALICE_KEY: is empty (named by auth.keys[0].key_env)"]


def test_literal_key_is_refused() -> None:
    errors = errors_of(AUTH_BASE + "    - {name: a, key: hunter2}\n")
    assert "auth.keys[0].key: secrets must come from key_env or key_file" in errors
    assert not any("hunter2" in error for error in errors)


def test_key_file_relative_to_config_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "k").write_text("  s3cret\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(AUTH_BASE + "    - {name: a, key_file: secrets/k, admin: true}\n")
    config = load_config(path, {})
    assert config.auth is not None and config.auth.keys[0].key == "s3cret"

    path.write_text(AUTH_BASE + "    - {name: a, key_file: missing}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    missing = tmp_path / "missing"
    assert caught.value.errors == [
        f"auth.keys[0].key_file: cannot read '{missing}': No such file or directory"
    ]
    (tmp_path / "empty").write_text("\n")
    path.write_text(AUTH_BASE + "    - {name: a, key_file: empty}\n")
    with pytest.raises(ConfigError, match=r"auth.keys\[0\].key_file: .* is empty"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("    - {name: a}\n", "auth.keys[0]: needs exactly one of key_env or key_file"),
        ("    - {name: a, key_env: A, key_file: f}\n", "auth.keys[0]: needs exactly one of"),
        ("    - {key_env: A}\n", "auth.keys[0].name: expected a string, got null"),
        (
            "    - {name: a, key_env: A, models: [nope]}\n",
            "auth.keys[0].models: unknown model 'nope'",
        ),
        (
            "    - {name: a, key_env: A, rate_limit_per_min: 0}\n",
            "auth.keys[0].rate_limit_per_min: must be >= 1",
        ),
        ("    - {name: a, key_env: A, admin: 1}\n", "auth.keys[0].admin: expected true or false"),
        (
            "    - {name: a, key_env: A}\n    - {name: a, key_env: B}\n",
            "auth.keys[1].name: 'a' is already used by auth.keys[0]",
        ),
        (
            "    - {name: a, key_env: A}\n    - {name: b, key_env: A}\n",
            "auth.keys[1]: has the same secret as auth.keys[0]",
        ),
        ("    - just-a-string\n", "auth.keys[0]: expected a mapping"),
        (
            "    - {name: a, key_env: A, modles: '*'}\n",
            "auth.keys[0]: unknown key 'modles' (did you mean 'models'?)",
        ),
    ],
)
def test_auth_errors(entries: str, message: str) -> None:
    errors = errors_of(AUTH_BASE + entries, {"A": "x", "B": "y"})
    assert any(error.startswith(message) for error in errors), errors


def test_auth_needs_keys() -> None:
    errors = errors_of(MINIMAL + "auth: {protect_status: true}\n")
    assert errors[0].startswith("auth.keys: expected a list of at least one key")


def test_more_pinned_models_than_max_loaded_models_is_refused() -> None:
    from vllm_gateway.config import ConfigError, load_config

    text = ("max_loaded_models: 1\nmodels:\n"
            "  a: {command: x, pinned: true}\n  b: {command: y, pinned: true}\n")
    try:
        load_config(None, {}, text=text)
    except ConfigError as err:
        assert any(e.startswith("max_loaded_models: 1 is less than the 2 pinned models (a, b)")
                   for e in err.errors), err.errors
    else:
        raise AssertionError("a config whose pinned models cannot all be loaded was accepted")
