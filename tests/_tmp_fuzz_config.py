"""Loading and checking configuration files: what a user writes and what they are told."""

from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_gateway.config import DockerSpec, GatewayConfig, GpuSpec
from vllm_gateway.config_load import ConfigError, check_config_main, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.yaml"

CONTRACT = """
server: {host: 127.0.0.1, port: 8000, shutdown_timeout_s: 30, max_body_mb: 32}
gpus: [{id: 0, vram_gb: 80}, {id: 1, vram_gb: 80}]
max_loaded_models: 3
defaults:
  max_concurrent: 50
  max_queue: 200
  idle_timeout_s: 1800
  startup_timeout_s: 1800
  request_timeout_s: 600
  launcher: subprocess
models:
  llama-8b:
    command: "vllm serve meta-llama/Llama-3.1-8B-Instruct --port {port} --served-model-name {name} --gpu-memory-utilization {gpu_memory_utilization}"
    vram_gb: 20
    gpu_count: 1
    aliases: [llama, gpt-4o-mini]
    env: {HF_HOME: /models}
    health_path: /health
    pinned: false
    forward_authorization: false
  remote:
    url: http://127.0.0.1:9000
  dockerized:
    launcher: docker
    image: vllm/vllm-openai:latest
    args: ["--model", "/models/x", "--port", "{port}", "--served-model-name", "{name}"]
    volumes: ["/models:/models:ro"]
    shm_size: 8g
    ipc: host
    network: host
retry: {max_retries: 3, delay_s: 1.0, backoff: 1.5}
faults: {start_backoff_s: 2, start_backoff_max_s: 60, max_failed_starts: 3, health_interval_s: 2, unhealthy_probes: 3, stop_grace_s: 10}
auth:
  protect_status: false
  keys:
    - {name: alice, key_env: ALICE_KEY, models: "*", admin: true, rate_limit_per_min: 600}
    - {name: bob, key_file: bob.key, models: [llama-8b]}
http_pool_size: 200
state_dir: /var/lib/vllm-gateway
"""  # noqa: E501

MINIMAL = "models:\n  m: {command: 'serve --port {port}'}\n"


def load(text: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> GatewayConfig:
    return load_config(None, env or {}, text=textwrap.dedent(text), **kwargs)


def errors_of(text: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, env, **kwargs)
    return caught.value.errors


def model_yaml(settings_yaml: str, name: str = "m") -> str:
    return f"models:\n  {name}: {settings_yaml}\n"


# --- a good file ---------------------------------------------------------------


def test_contract_file_round_trip(tmp_path: Path) -> None:
    (tmp_path / "bob.key").write_text("bob-secret\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(CONTRACT)
    config = load_config(path, {"ALICE_KEY": "alice-secret"})

    assert config.server.host == "127.0.0.1" and config.server.port == 8000
    assert config.server.shutdown_timeout_s == 30 and config.server.max_body_mb == 32
    assert config.gpus == (GpuSpec(0, 80), GpuSpec(1, 80))
    assert config.max_loaded_models == 3
    assert list(config.models) == ["llama-8b", "remote", "dockerized"]

    llama = config.models["llama-8b"]
    assert llama.command is not None and llama.command[:3] == ("vllm", "serve",
                                                               "meta-llama/Llama-3.1-8B-Instruct")
    assert "{gpu_memory_utilization}" in llama.command
    assert llama.vram_gb == 20 and llama.gpu_count == 1
    assert llama.aliases == ("llama", "gpt-4o-mini")
    assert dict(llama.env) == {"HF_HOME": "/models"}
    assert llama.launcher == "subprocess" and llama.managed
    assert (llama.max_concurrent, llama.max_queue) == (50, 200)
    assert (llama.idle_timeout_s, llama.startup_timeout_s, llama.request_timeout_s) == (
        1800, 1800, 600)

    remote = config.models["remote"]
    assert remote.url == "http://127.0.0.1:9000" and not remote.managed
    assert remote.command is None and remote.docker is None

    docker = config.models["dockerized"]
    assert docker.launcher == "docker" and docker.command is None
    assert docker.docker == DockerSpec(
        image="vllm/vllm-openai:latest",
        args=("--model", "/models/x", "--port", "{port}", "--served-model-name", "{name}"),
        volumes=("/models:/models:ro",),
        shm_size="8g",
        ipc="host",
        network="host",
    )
    assert (config.retry.max_retries, config.retry.delay_s, config.retry.backoff) == (3, 1.0, 1.5)
    assert config.faults.start_backoff_s == 2 and config.faults.stop_grace_s == 10
    assert config.faults.unhealthy_probes == 3
    assert config.auth is not None and not config.auth.protect_status
    alice, bob = config.auth.keys
    assert (alice.name, alice.key, alice.models, alice.admin, alice.rate_limit_per_min) == (
        "alice", "alice-secret", "*", True, 600)
    assert (bob.name, bob.key, bob.models, bob.admin, bob.rate_limit_per_min) == (
        "bob", "bob-secret", ("llama-8b",), False, None)
    assert config.http_pool_size == 200 and config.state_dir == "/var/lib/vllm-gateway"
    assert config.lookup("gpt-4o-mini") is llama


def test_builtin_defaults_for_a_minimal_file() -> None:
    config = load(MINIMAL)
    assert config == GatewayConfig(models=config.models)
    model = config.models["m"]
    assert model.command == ("serve", "--port", "{port}")
    assert (model.max_concurrent, model.max_queue, model.idle_timeout_s) == (50, 200, 1800)
    assert (model.vram_gb, model.gpu_count, model.health_path) == (0, 1, "/health")
    assert config.gpus is None and config.auth is None


def test_command_as_list_and_quoted_string() -> None:
    config = load(
        "models:\n"
        "  a: {command: [vllm, serve, x, --max-model-len, 4096]}\n"
        "  b: {command: \"serve --chat-template '{{ messages }}' --port {port}\"}\n"
    )
    assert config.models["a"].command == ("vllm", "serve", "x", "--max-model-len", "4096")
    assert config.models["b"].command == (
        "serve", "--chat-template", "{{ messages }}", "--port", "{port}")


def test_gpus_auto_skips_size_checks() -> None:
    config = load("gpus: auto\n" + model_yaml("{command: x, vram_gb: 500, gpu_count: 8}"))
    assert config.gpus == "auto"


def test_docker_bridge_network_and_defaults_launcher() -> None:
    config = load(
        "defaults: {launcher: docker}\n"
        "models:\n"
        "  d: {image: img:1, network: bridge, container_port: 8080, shm_size: 1024}\n"
        "  s: {launcher: subprocess, command: serve}\n"
    )
    d = config.models["d"]
    assert d.launcher == "docker" and d.docker is not None
    assert (d.docker.network, d.docker.container_port, d.docker.shm_size) == ("bridge", 8080,
                                                                             "1024")
    assert config.models["s"].launcher == "subprocess"


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
        ("GATEWAY_MAX_MODELS_CONCURRENT", "5", "max_loaded_models: 2",
         lambda c: c.max_loaded_models, 2, 5),
        ("GATEWAY_HTTP_POOL_SIZE", "64", "http_pool_size: 10", lambda c: c.http_pool_size, 10, 64),
        ("GATEWAY_MAX_RETRIES", "0", "retry: {max_retries: 4}", lambda c: c.retry.max_retries, 4, 0),
        ("GATEWAY_RETRY_DELAY", "0.25", "retry: {delay_s: 2}", lambda c: c.retry.delay_s, 2, 0.25),
        ("GATEWAY_RETRY_BACKOFF", "3", "retry: {backoff: 2}", lambda c: c.retry.backoff, 2, 3),
        ("LOG_LEVEL", "debug", "log_level: warning", lambda c: c.log_level, "WARNING", "DEBUG"),
        ("VLLM_CONTAINER_PREFIX", "gw-test", "container_prefix: mine",
         lambda c: c.container_prefix, "mine", "gw-test"),
    ],
)
def test_environment_beats_top_level_keys(
    variable: str, value: str, file_yaml: str, read: Any, from_file: object, from_env: object
) -> None:
    assert read(load(file_yaml + "\n" + MINIMAL)) == from_file
    assert read(load(file_yaml + "\n" + MINIMAL, {variable: value})) == from_env


def test_environment_beats_builtin_defaults() -> None:
    config = load(MINIMAL, {
        "GATEWAY_MAX_MODELS_CONCURRENT": "2", "GATEWAY_HTTP_POOL_SIZE": "9",
        "LOG_LEVEL": "Error", "VLLM_CONTAINER_PREFIX": "p",
    })
    assert (config.max_loaded_models, config.http_pool_size) == (2, 9)
    assert (config.log_level, config.container_prefix) == ("ERROR", "p")
    assert load(MINIMAL).container_prefix == "vllm"


def test_empty_variables_count_as_unset() -> None:
    config = load(MINIMAL, {"GATEWAY_MAX_CONCURRENT": "", "ALLOWED_MODELS": " ", "LOG_LEVEL": ""})
    assert config.models["m"].max_concurrent == 50 and config.log_level == "INFO"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_MAX_CONCURRENT", "abc", "GATEWAY_MAX_CONCURRENT: expected a positive integer, "
                                          "got 'abc'"),
        ("GATEWAY_MAX_CONCURRENT", "0", "GATEWAY_MAX_CONCURRENT: expected a positive integer"),
        ("GATEWAY_MAX_QUEUE_SIZE", "-1", "GATEWAY_MAX_QUEUE_SIZE: expected an integer >= 0"),
        ("GATEWAY_MAX_MODELS_CONCURRENT", "1.5", "GATEWAY_MAX_MODELS_CONCURRENT: expected a "
                                                 "positive integer"),
        ("GATEWAY_MAX_RETRIES", "x", "GATEWAY_MAX_RETRIES: expected an integer >= 0"),
        ("GATEWAY_RETRY_DELAY", "-1", "GATEWAY_RETRY_DELAY: expected a number >= 0, got '-1'"),
        ("GATEWAY_RETRY_BACKOFF", "0.5", "GATEWAY_RETRY_BACKOFF: expected a number >= 1"),
        ("GATEWAY_HTTP_POOL_SIZE", "0", "GATEWAY_HTTP_POOL_SIZE: expected a positive integer"),
        ("VLLM_INACTIVITY_TIMEOUT", "soon", "VLLM_INACTIVITY_TIMEOUT: expected a number >= 0"),
        ("VLLM_REQUEST_TIMEOUT", "nan", "VLLM_REQUEST_TIMEOUT: expected a number >= 0"),
        ("VLLM_CONTAINER_PREFIX", "bad/name", "VLLM_CONTAINER_PREFIX: expected letters"),
        ("TOTAL_GPU_VRAM", "0", "TOTAL_GPU_VRAM: expected a number > 0, got '0'"),
        ("ALLOWED_MODELS", ",,", "ALLOWED_MODELS: lists no model names"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_bad_environment_variable_is_named(variable: str, value: str, message: str) -> None:
    errors = errors_of(MINIMAL, {variable: value})
    assert len(errors) == 1 and errors[0].startswith(message), errors


# --- TOTAL_GPU_VRAM and ALLOWED_MODELS ------------------------------------------------


def test_total_gpu_vram_declares_one_gpu() -> None:
    assert load(MINIMAL, {"TOTAL_GPU_VRAM": "24"}).gpus == (GpuSpec(0, 24.0),)
    assert load(MINIMAL).gpus is None


def test_file_gpus_win_over_total_gpu_vram() -> None:
    assert load("gpus: [{id: 3, vram_gb: 40}]\n" + MINIMAL, {"TOTAL_GPU_VRAM": "24"}).gpus == (
        GpuSpec(3, 40),)
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


# --- errors, each with its key path ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (model_yaml("{command: x, vram_gb: 0}", "llama-8b"), "models.llama-8b.vram_gb: must be > 0"),
        (model_yaml("{command: x, vram_gb: -3}"), "models.m.vram_gb: must be > 0, got -3"),
        (model_yaml("{command: x, vram_gb: lots}"), "models.m.vram_gb: expected a number > 0, got "
                                                    "'lots'"),
        ("defaults: {max_queue: x}\n" + MINIMAL, "defaults.max_queue: expected an integer >= 0, "
                                                 "got 'x'"),
        ("defaults: {max_concurrent: 0}\n" + MINIMAL, "defaults.max_concurrent: must be >= 1, "
                                                      "got 0"),
        ("defaults: {idle_timeout_s: -1}\n" + MINIMAL, "defaults.idle_timeout_s: must be >= 0"),
        ("defaults: {launcher: podman}\n" + MINIMAL, "defaults.launcher: expected 'subprocess' "
                                                     "or 'docker', got 'podman'"),
        (model_yaml("{command: x, gpu_count: 0}"), "models.m.gpu_count: must be >= 1, got 0"),
        (model_yaml("{command: x, max_concurrent: true}"), "models.m.max_concurrent: expected a "
                                                           "positive integer, got true"),
        (model_yaml("{command: x, startup_timeout_s: .inf}"), "models.m.startup_timeout_s: "
                                                              "expected a finite number"),
        (model_yaml("{command: x, pinned: maybe}"), "models.m.pinned: expected true or false"),
        (model_yaml("{command: x, health_path: health}"), "models.m.health_path: must start "
                                                          "with '/'"),
        (model_yaml("{command: x, env: {A: [1]}}"), "models.m.env.A: expected a string"),
        (model_yaml("{command: ''}"), "models.m.command: must not be empty"),
        (model_yaml("{command: \"serve 'open\"}"), "models.m.command: cannot split into "
                                                   "arguments"),
        (model_yaml("{command: [serve, {a: 1}]}"), "models.m.command[1]: expected a string"),
        (model_yaml("{command: 'serve --model {model}'}"), "models.m.command: unknown "
                                                           "placeholder '{model}'"),
        (model_yaml("{command: 'serve --port {port:d}'}"), "models.m.command: placeholder "
                                                           "{port} takes no format spec"),
        (model_yaml("{command: 'serve {'}"), "models.m.command: bad braces"),
        (model_yaml("{launcher: docker, image: i, args: ['{gpu}']}"), "models.m.args: unknown "
                                                                      "placeholder '{gpu}'"),
        (model_yaml("{url: 'ftp://h:1'}"), "models.m.url: expected http(s)://host:port"),
        (model_yaml("{url: 'http://h'}"), "models.m.url: expected http(s)://host:port"),
        (model_yaml("{url: 'http://h:1/v1'}"), "models.m.url: expected http(s)://host:port"),
        (model_yaml("{url: 'http://h:1', vram_gb: 3}"), "models.m.vram_gb: not used with url"),
        (model_yaml("{command: x, url: 'http://h:1'}"), "models.m: give only one of command, "
                                                        "url or image"),
        (model_yaml("{vram_gb: 3}"), "models.m: needs command"),
        (model_yaml("{command: x, image: y}"), "models.m: give only one of command, url or image"),
        (model_yaml("{command: x, volumes: ['/a:/b']}"), "models.m.volumes: only used with "
                                                         "launcher: docker"),
        (model_yaml("{launcher: docker, args: [x]}"), "models.m: launcher: docker needs image"),
        (model_yaml("{launcher: docker, image: i, volumes: [nope]}"), "models.m.volumes[0]: "
                                                                      "expected host:container"),
        (model_yaml("{launcher: docker, image: i, network: overlay}"), "models.m.network: "
                                                                       "expected 'host' or "
                                                                       "'bridge'"),
        (model_yaml("{launcher: docker, image: i, container_port: 80}"), "models.m.container_port"
                                                                         ": only used with network"
                                                                         ": bridge"),
        (model_yaml("{launcher: docker, image: i, shm_size: lots}"), "models.m.shm_size: expected "
                                                                     "a size"),
        (model_yaml("{launcher: docker, image: i, ipc: shared}"), "models.m.ipc: expected host"),
        (model_yaml("{command: x}", "'bad name'"), "models: model name 'bad name' must not "
                                                   "contain whitespace"),
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
        ("faults: {start_backoff_s: 9, start_backoff_max_s: 3}\n" + MINIMAL,
         "faults.start_backoff_max_s: must be >= faults.start_backoff_s (9), got 3"),
        ("gpus: all\n" + MINIMAL, "gpus: expected auto or a list"),
        ("gpus: [{id: 0}]\n" + MINIMAL, "gpus[0]: needs both id and vram_gb"),
        ("gpus: [{id: 0, vram_gb: 8}, {id: 0, vram_gb: 8}]\n" + MINIMAL,
         "gpus[1].id: GPU 0 is listed twice"),
        ("gpus: [{id: -1, vram_gb: 8}]\n" + MINIMAL, "gpus[0].id: must be >= 0"),
        ("log_level: loud\n" + MINIMAL, "log_level: expected one of DEBUG"),
        ("log_format: xml\n" + MINIMAL, "log_format: expected 'text' or 'json', got 'xml'"),
        ("state_dir: ''\n" + MINIMAL, "state_dir: must not be empty"),
    ],
)
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
        "{command: x, vram_gb: 120}", "big")
    assert errors_of(text) == [
        "models.big.vram_gb: 120 GB does not fit on any GPU (largest: 80 GB)"]


def test_model_needing_more_gpus_than_declared() -> None:
    text = "gpus: [{id: 0, vram_gb: 80}]\n" + model_yaml("{command: x, gpu_count: 2}", "tp")
    assert errors_of(text) == ["models.tp.gpu_count: needs 2 GPUs but only 1 is declared"]
    text = "gpus: [{id: 0, vram_gb: 80}, {id: 1, vram_gb: 24}]\n" + model_yaml(
        "{command: x, gpu_count: 2, vram_gb: 40}", "tp")
    assert errors_of(text) == [
        "models.tp.vram_gb: 40 GB fits on only 1 GPU(s) but gpu_count is 2"]


def test_big_model_without_declared_gpus_is_fine() -> None:
    assert load(model_yaml("{command: x, vram_gb: 500, gpu_count: 4}")).models["m"].vram_gb == 500


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
        "models.a: needs command (a server to start), url (a server already running) "
        "or launcher: docker with image",
        "models.b.vram_gb: must be > 0, got 0",
        "server.port: expected an integer from 0 to 65535, got 'x'",
    ]


def test_unknown_key_suggestion_only_when_close() -> None:
    assert "models.m: unknown key 'vram' (did you mean 'vram_gb'?)" in errors_of(
        model_yaml("{command: x, vram: 3}"))
    assert "models.m: unknown key 'flavour'" in errors_of(model_yaml("{command: x, flavour: 3}"))
    assert "retry: unknown key 'retries'" in "\n".join(
        errors_of("retry: {retries: 3}\n" + MINIMAL))


def test_config_error_text_and_pickling() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert str(error) == "a: one\nb: two" and error.errors == ["a: one", "b: two"]
    copy_ = pickle.loads(pickle.dumps(error))
    assert copy_.errors == error.errors and str(copy_) == str(error)


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
        ("just text\n", "config: expected a mapping of settings at the top level, got 'just "
                        "text'"),
        ("models:\n  m: {command: x\n", "config: invalid YAML at line 3, column 1"),
        ("models:\n\tm: 1\n", "config: invalid YAML at line 2, column 1"),
        ("models:\n  m: {command: x}\n  m: {command: y}\n", "config: invalid YAML at line 3, "
                                                            "column 3: found duplicate key 'm'"),
        ("a: 1\n---\nb: 2\n", "config: invalid YAML at line 2"),
    ],
)
def test_unreadable_documents(text: str, message: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_merge_keys_may_override() -> None:
    text = """
        defaults: {max_queue: 1}
        models:
          a: &a {command: serve, max_queue: 5}
          b:
            <<: *a
            max_queue: 6
        """
    config = load(text)
    assert (config.models["a"].max_queue, config.models["b"].max_queue) == (5, 6)


# --- auth -------------------------------------------------------------------------------

AUTH_BASE = MINIMAL + "auth:\n  keys:\n"


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
    assert caught.value.errors == [
        f"auth.keys[0].key_file: cannot read '{tmp_path / 'missing'}': No such file or directory"]
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
        ("    - {name: a, key_env: A, models: [nope]}\n", "auth.keys[0].models: unknown model "
                                                          "'nope'"),
        ("    - {name: a, key_env: A, rate_limit_per_min: 0}\n", "auth.keys[0].rate_limit_per_min"
                                                                 ": must be >= 1"),
        ("    - {name: a, key_env: A, admin: 1}\n", "auth.keys[0].admin: expected true or false"),
        ("    - {name: a, key_env: A}\n    - {name: a, key_env: B}\n",
         "auth.keys[1].name: 'a' is already used by auth.keys[0]"),
        ("    - {name: a, key_env: A}\n    - {name: b, key_env: A}\n",
         "auth.keys[1]: has the same secret as auth.keys[0]"),
        ("    - just-a-string\n", "auth.keys[0]: expected a mapping"),
        ("    - {name: a, key_env: A, modles: '*'}\n", "auth.keys[0]: unknown key 'modles' (did "
                                                       "you mean 'models'?)"),
    ],
)
def test_auth_errors(entries: str, message: str) -> None:
    errors = errors_of(AUTH_BASE + entries, {"A": "x", "B": "y"})
    assert any(error.startswith(message) for error in errors), errors


def test_auth_needs_keys_and_resolves_aliases() -> None:
    assert errors_of(MINIMAL + "auth: {protect_status: true}\n")[0].startswith(
        "auth.keys: expected a list of at least one key")
    config = load(
        "models:\n  m: {command: x, aliases: [mm]}\n  n: {command: y}\n"
        "auth:\n  protect_status: true\n  keys:\n    - {name: a, key_env: A, models: [mm, m]}\n",
        {"A": "k"},
    )
    assert config.auth is not None and config.auth.protect_status
    assert config.auth.keys[0].models == ("m",)


# --- check-config and the example --------------------------------------------------------


def test_check_config_main(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("models:\n  a: {command: x}\n  b: {url: 'http://127.0.0.1:9'}\n")
    assert check_config_main(str(path), {}) == (0, "OK: 2 models (a, b)")
    code, message = check_config_main(str(path), {"ALLOWED_MODELS": "b"})
    assert (code, message) == (0, "OK: 1 model (b)")
    path.write_text("models:\n  a: {command: x, vram_gb: 0}\n  b: {comand: x}\n")
    code, message = check_config_main(str(path), {})
    assert code == 1
    assert message.splitlines() == [
        "models.a.vram_gb: must be > 0, got 0",
        "models.b: unknown key 'comand' (did you mean 'command'?)",
        "models.b: needs command (a server to start), url (a server already running) "
        "or launcher: docker with image",
    ]
    assert check_config_main(str(tmp_path / "none.yaml"), {}) == (
        1, f"{tmp_path / 'none.yaml'}: no such file")


def test_example_config_loads() -> None:
    code, message = check_config_main(str(EXAMPLE), {"ALICE_KEY": "a-key", "BOB_KEY": "b-key"})
    assert code == 0, message
    assert message.startswith("OK: 3 models (llama-8b, remote, dockerized)")
    config = load_config(EXAMPLE, {"ALICE_KEY": "a-key", "BOB_KEY": "b-key"})
    assert config.gpus == "auto" and config.auth is not None
    assert config.models["llama-8b"].idle_timeout_s == 600
    code, message = check_config_main(str(EXAMPLE), {})
    assert code == 1 and message.splitlines() == [
        "ALICE_KEY: is not set (named by auth.keys[0].key_env)",
        "BOB_KEY: is not set (named by auth.keys[1].key_env)",
    ]


# --- nothing but ConfigError, whatever the input ------------------------------------------

_KEYS = [
    "server", "gpus", "max_loaded_models", "defaults", "models", "retry", "faults", "auth",
    "http_pool_size", "state_dir", "log_level", "log_format", "container_prefix", "host", "port",
    "command", "url", "launcher", "image", "args", "volumes", "shm_size", "ipc", "network",
    "container_port", "vram_gb", "gpu_count", "aliases", "env", "health_path", "pinned",
    "max_concurrent", "max_queue", "idle_timeout_s", "keys", "name", "key_env", "key_file", "key",
    "id", "backoff", "delay_s", "m", "auto", "*",
]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 100_000), st.floats(), st.sampled_from(_KEYS),
    st.text(max_size=12), st.sampled_from(["{port}", "{nope}", "{", "http://h:1", "a:b", "8g"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)
_ENV = st.dictionaries(
    st.sampled_from([
        "GATEWAY_MAX_QUEUE_SIZE", "GATEWAY_MAX_CONCURRENT", "GATEWAY_MAX_MODELS_CONCURRENT",
        "GATEWAY_RETRY_DELAY", "TOTAL_GPU_VRAM", "ALLOWED_MODELS", "LOG_LEVEL", "A",
        "VLLM_CONTAINER_PREFIX",
    ]),
    st.sampled_from(["", "0", "1", "-1", "2.5", "abc", "nan", "1e400", "m", "m,x", "debug"]),
    max_size=4,
)
_FUZZ = settings(max_examples=3000, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_config_errors(text: str, env: Mapping[str, str], base: Path) -> None:
    try:
        config = load_config(base / "fuzz.yaml", env, text=text)
    except ConfigError as error:
        assert error.errors and all(isinstance(line, str) and line for line in error.errors)
    else:
        assert isinstance(config, GatewayConfig)


@_FUZZ
@given(document=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6), env=_ENV)
def test_random_structures_raise_only_config_error(
    document: dict[str, object], env: dict[str, str], tmp_path: Path
) -> None:
    _only_config_errors(yaml.safe_dump(document), env, tmp_path)


@_FUZZ
@given(data=st.data(), env=_ENV)
def test_mutated_contract_raises_only_config_error(
    data: st.DataObject, env: dict[str, str], tmp_path: Path
) -> None:
    document = copy.deepcopy(yaml.safe_load(CONTRACT))
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
        parent[key] = data.draw(_VALUES)
    _only_config_errors(yaml.safe_dump(document), {**env, "ALICE_KEY": "k"}, tmp_path)


@_FUZZ
@given(text=st.text(alphabet=" \n\t:-[]{},'\"#&*!|>%@`abc01.", max_size=80))
def test_random_text_raises_only_config_error(text: str, tmp_path: Path) -> None:
    _only_config_errors(text, {}, tmp_path)
