"""Loading good configuration files: every value lands where it should (the contract file,
built-in defaults, command forms, Docker, merge keys, auth by alias); check-config and the
example file. Precedence and the environment variables are in test_config_precedence.py."""

from __future__ import annotations

from pathlib import Path

from config_helpers import MINIMAL, load, model_yaml

from vllm_gateway.cli import check_config_main
from vllm_gateway.config import DockerSpec, GatewayConfig, GpuSpec, load_config

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
"""

NEEDS_A_WAY = (
    "needs command (a server to start), url (a server already running) "
    "or launcher: docker with image"
)


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
    assert llama.command is not None and llama.command[:3] == (
        "vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
    )
    assert "{gpu_memory_utilization}" in llama.command
    assert llama.vram_gb == 20 and llama.gpu_count == 1
    assert llama.aliases == ("llama", "gpt-4o-mini")
    assert dict(llama.env) == {"HF_HOME": "/models"}
    assert llama.launcher == "subprocess" and llama.managed
    assert (llama.max_concurrent, llama.max_queue) == (50, 200)
    assert (llama.idle_timeout_s, llama.startup_timeout_s, llama.request_timeout_s) == (
        1800,
        1800,
        600,
    )

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
        "alice",
        "alice-secret",
        "*",
        True,
        600,
    )
    assert (bob.name, bob.key, bob.models, bob.admin, bob.rate_limit_per_min) == (
        "bob",
        "bob-secret",
        ("llama-8b",),
        False,
        None,
    )
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
        "serve",
        "--chat-template",
        "{{ messages }}",
        "--port",
        "{port}",
    )


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
    assert (d.docker.network, d.docker.container_port, d.docker.shm_size) == (
        "bridge",
        8080,
        "1024",
    )
    assert config.models["s"].launcher == "subprocess"


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


def test_auth_keys_name_models_by_alias() -> None:
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
    assert code == 2
    assert message.splitlines() == [
        "models.a.vram_gb: must be > 0, got 0",
        "models.b: unknown key 'comand' (did you mean 'command'?)",
        f"models.b: {NEEDS_A_WAY}",
    ]
    assert check_config_main(str(tmp_path / "none.yaml"), {}) == (
        2,
        f"{tmp_path / 'none.yaml'}: no such file",
    )


def test_example_config_loads() -> None:
    code, message = check_config_main(str(EXAMPLE), {"ALICE_KEY": "a-key", "BOB_KEY": "b-key"})
    assert code == 0, message
    assert message.startswith("OK: 3 models (llama-8b, remote, dockerized)")
    config = load_config(EXAMPLE, {"ALICE_KEY": "a-key", "BOB_KEY": "b-key"})
    assert config.gpus == "auto" and config.auth is not None
    assert config.models["llama-8b"].idle_timeout_s == 600
    code, message = check_config_main(str(EXAMPLE), {})
    assert code == 2 and message.splitlines() == [
        "ALICE_KEY: is not set (named by auth.keys[0].key_env)",
        "BOB_KEY: is not set (named by auth.keys[1].key_env)",
    ]
