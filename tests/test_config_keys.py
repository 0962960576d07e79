"""The keys of the sleep tier, patience, replicas, GPU sets, defaults, LoRA and Ray.

Each rule has a good file that lands where it should and a bad one whose error
names the key path (or both places, for a clash).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vllm_gateway.cli import check_config_main
from vllm_gateway.config import ConfigError, GatewayConfig, Replicas, load_config

CMD = "'serve --port {port}'"


def load(text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    return load_config(None, env or {}, text=textwrap.dedent(text))


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    return caught.value.errors


def model(settings: str, top: str = "") -> str:
    return f"{top}models:\n  m: {{command: {CMD}, {settings}}}\n"


# --- good values land on the model ------------------------------------------------------


def test_builtin_values_of_the_new_keys() -> None:
    m = load(f"models:\n  m: {{command: {CMD}}}\n").models["m"]
    assert (m.sleep, m.sleep_vram_gb, m.weights_gb, m.sleep_timeout_s, m.wake_check) == (
        0, 1.0, None, 0.0, True)
    assert (m.swap_patience_s, m.replicas, m.scale_up_after_s) == (None, Replicas(0, 1), 5.0)
    assert (m.gpu_ids, m.node, m.default, m.restore_after_s, m.vram_auto) == (
        None, None, False, 30.0, False)
    assert (dict(m.adapters), m.max_adapters, m.max_lora_rank) == ({}, 4, 16)


@pytest.mark.parametrize(("written", "level"), [("off", 0), ("'off'", 0), ("1", 1), ("2", 2)])
def test_sleep_levels(written: str, level: int) -> None:
    assert load(model(f"sleep: {written}, vram_gb: 8")).models["m"].sleep == level


def test_every_sleep_and_placement_key_per_model() -> None:
    config = load(model(
        "vram_gb: 20, sleep: 1, sleep_vram_gb: 2.5, weights_gb: 18, sleep_timeout_s: 600, "
        "wake_check: false, swap_patience_s: 0, replicas: {min: 1, max: 3}, "
        "scale_up_after_s: 2, gpu_ids: [1], default: true, restore_after_s: 10",
        top="gpus: [{id: 0, vram_gb: 24}, {id: 1, vram_gb: 24}]\n",
    ))
    m = config.models["m"]
    assert (m.sleep, m.sleep_vram_gb, m.weights_gb, m.sleep_timeout_s) == (1, 2.5, 18.0, 600.0)
    assert (m.wake_check, m.swap_patience_s, m.replicas) == (False, 0.0, Replicas(1, 3))
    assert (m.scale_up_after_s, m.gpu_ids, m.default, m.restore_after_s) == (2.0, (1,), True, 10.0)


def test_defaults_take_every_key_that_fits_all_models() -> None:
    config = load("""
        gpus: [{id: 0, vram_gb: 80}, {id: 1, vram_gb: 80}]
        defaults:
          sleep: 2
          sleep_vram_gb: 1.5
          sleep_timeout_s: 900
          wake_check: false
          swap_patience_s: 12
          replicas: {min: 0, max: 2}
          scale_up_after_s: 3
          gpu_ids: [0, 1]
          restore_after_s: 45
          max_adapters: 2
          max_lora_rank: 64
          env: {HF_HOME: /models, A: default}
          health_path: /ping
        models:
          a: {command: "serve {port}", vram_gb: 20, env: {A: own}}
          b: {command: "serve {port}", vram_gb: 20, sleep: off, replicas: {max: 1}}
        """)
    a, b = config.models["a"], config.models["b"]
    assert (a.sleep, a.sleep_vram_gb, a.sleep_timeout_s, a.wake_check) == (2, 1.5, 900.0, False)
    assert (a.swap_patience_s, a.replicas, a.scale_up_after_s) == (12.0, Replicas(0, 2), 3.0)
    assert (a.gpu_ids, a.restore_after_s, a.max_adapters, a.max_lora_rank) == (
        (0, 1), 45.0, 2, 64)
    assert dict(a.env) == {"HF_HOME": "/models", "A": "own"} and a.health_path == "/ping"
    assert (b.sleep, b.replicas) == (0, Replicas(0, 1))


def test_docker_image_and_args_in_defaults() -> None:
    config = load("""
        defaults:
          launcher: docker
          image: vllm/vllm-openai:latest
          args: ["--port", "{port}", "--served-model-name", "{name}"]
          volumes: ["/srv/models:/models:ro"]
          network: bridge
          container_port: 8000
        models:
          a: {vram_gb: 20}
          b: {args: ["--model", "/models/b", "--port", "{port}"], network: host}
          c: {launcher: subprocess, command: "serve {port}"}
          r: {url: "http://127.0.0.1:9000"}
        """)
    a, b, c = (config.models[name] for name in "abc")
    assert a.docker is not None and a.docker.image == "vllm/vllm-openai:latest"
    assert a.docker.args == ("--port", "{port}", "--served-model-name", "{name}")
    assert a.docker.volumes == ("/srv/models:/models:ro",) and a.docker.network == "bridge"
    assert b.docker is not None and b.docker.args[:2] == ("--model", "/models/b")
    assert b.docker.network == "host" and b.docker.container_port == 8000
    assert c.launcher == "subprocess" and c.docker is None and c.command == ("serve", "{port}")
    assert config.models["r"].url == "http://127.0.0.1:9000"


def test_vram_auto_starts_from_the_estimate() -> None:
    m = load(model("vram_gb: auto, vram_gb_estimate: 18")).models["m"]
    assert (m.vram_auto, m.vram_gb) == (True, 18.0)


def test_adapters_by_path_or_mapping_and_the_alias_index() -> None:
    config = load("""
        models:
          base:
            command: "serve {port} --max-loras {max_loras} --max-lora-rank {max_lora_rank}"
            aliases: [b]
            adapters:
              sql: /adapters/sql
              chat: {path: /adapters/chat, aliases: [friendly]}
            max_adapters: 1
            max_lora_rank: 32
        """)
    base = config.models["base"]
    assert (base.max_adapters, base.max_lora_rank) == (1, 32)
    assert base.adapters["sql"].path == "/adapters/sql" and base.adapters["sql"].base == "base"
    assert base.adapters["chat"].aliases == ("friendly",)
    assert config.lookup("b") is base and config.lookup("sql") is None
    found = config.lookup_adapter("friendly")
    assert found is not None and found[0] is base and found[1].name == "chat"
    assert config.lookup_adapter("base") is None and config.lookup_adapter("nope") is None


def test_top_level_host_memory_and_ray() -> None:
    config = load("""
        host_memory_gb: 40
        gpus: ray
        ray: {address: "ray://head:10001", namespace: team, gpu_vram_gb: 24}
        defaults: {launcher: ray}
        models:
          m: {command: "serve {port}", node: gpu-node-2, vram_gb: 20}
        """)
    assert config.host_memory_gb == 40.0 and config.gpus == "ray"
    assert (config.ray.address, config.ray.namespace, config.ray.gpu_vram_gb) == (
        "ray://head:10001", "team", 24.0)
    m = config.models["m"]
    assert (m.launcher, m.node) == ("ray", "gpu-node-2")
    plain = load(f"host_memory_gb: auto\nmodels:\n  m: {{command: {CMD}}}\n")
    assert plain.host_memory_gb == "auto" and plain.ray.address == "auto"
    assert plain.ray.namespace == "vllm-gateway" and plain.ray.gpu_vram_gb is None


def test_check_config_accepts_the_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "host_memory_gb: 64\ngpus: [{id: 0, vram_gb: 48}]\n"
        "defaults: {sleep: 1, launcher: docker, image: vllm/vllm-openai:latest, args: ['{port}']}\n"
        "models:\n  a: {vram_gb: 20, adapters: {x: /a/x}}\n  b: {vram_gb: 20, default: true}\n"
    )
    code, text = check_config_main(str(path), {})
    assert (code, text.splitlines()[0]) == (0, "OK: 2 models (a, b)"), text


# --- each rule's error names the key path --------------------------------------------

TWO_GPUS = "gpus: [{id: 0, vram_gb: 24}, {id: 1, vram_gb: 80}]\n"
ERROR_CASES = [
    (model("sleep: 3"), "models.m.sleep: expected off, 1 or 2, got 3"),
    (model("sleep: deep"), "models.m.sleep: expected off, 1 or 2, got 'deep'"),
    (model("sleep: true"), "models.m.sleep: expected off, 1 or 2, got true"),
    ("defaults: {sleep: 3}\n" + model("vram_gb: 8"), "defaults.sleep: expected off, 1 or 2"),
    (model("sleep_vram_gb: -1"), "models.m.sleep_vram_gb: must be >= 0, got -1"),
    (model("sleep: 1, vram_gb: 8, sleep_vram_gb: 8"), "models.m.sleep_vram_gb: must be < vram_gb (8)"),
    (model("sleep: 1, vram_gb: 0.5"), "models.m.sleep_vram_gb: must be < vram_gb (0.5)"),
    ("defaults: {sleep: 1, sleep_vram_gb: 9}\n" + model("vram_gb: 8"),
     "defaults.sleep_vram_gb: must be < vram_gb (8)"),
    (model("weights_gb: x"), "models.m.weights_gb: expected a number >= 0"),
    (model("sleep_timeout_s: -5"), "models.m.sleep_timeout_s: must be >= 0"),
    (model("wake_check: 1"), "models.m.wake_check: expected true or false"),
    (model("swap_patience_s: -1"), "models.m.swap_patience_s: must be >= 0"),
    (model("replicas: {min: 2, max: 1}"), "models.m.replicas.min: must be <= models.m.replicas.max"),
    (model("replicas: {max: 0}"), "models.m.replicas.max: must be >= 1, got 0"),
    (model("replicas: {mx: 2}"), "models.m.replicas: unknown key 'mx' (did you mean 'max'?)"),
    (model("replicas: 2"), "models.m.replicas: expected a mapping like {min: 0, max: 2}"),
    (model("scale_up_after_s: soon"), "models.m.scale_up_after_s: expected a number >= 0"),
    (model("restore_after_s: -1"), "models.m.restore_after_s: must be >= 0"),
    (model("gpu_ids: 0"), "models.m.gpu_ids: expected a list of GPU ids"),
    (model("gpu_ids: [0, 0]"), "models.m.gpu_ids: GPU 0 is listed twice"),
    (TWO_GPUS + model("gpu_ids: [3]"),
     "models.m.gpu_ids: GPU 3 is not among the configured GPUs (0, 1)"),
    (TWO_GPUS + model("gpu_ids: [1], gpu_count: 2"),
     "models.m.gpu_ids: allows 1 GPU(s) but gpu_count is 2"),
    (TWO_GPUS + model("gpu_ids: [0], vram_gb: 40"),
     "models.m.gpu_ids: 40 GB fits on 0 of the allowed GPUs [0] but gpu_count is 1"),
    ("defaults: {gpu_ids: [5]}\n" + TWO_GPUS + model("vram_gb: 8"),
     "defaults.gpu_ids: GPU 5 is not among the configured GPUs"),
    (model("gpu_ids: [0]"), "models.m.gpu_ids: no GPUs are declared"),
    (model("node: a"), "models.m.node: only used with launcher: ray"),
    (model("default: yes please"), "models.m.default: expected true or false"),
    (model("default: true, pinned: true"), "models.m.default: not with pinned: true"),
    ("defaults: {default: true}\n" + model("vram_gb: 8"),
     "defaults.default: differs from model to model; set it under models.<name>"),
    ("defaults: {command: x}\n" + model("vram_gb: 8"), "defaults.command: differs from model"),
    (model("vram_gb: auto"), "models.m.vram_gb: auto needs vram_gb_estimate"),
    (model("vram_gb: 8, vram_gb_estimate: 8"),
     "models.m.vram_gb_estimate: only used with vram_gb: auto"),
    (model("vram_gb: auto, vram_gb_estimate: 0"), "models.m.vram_gb_estimate: must be > 0"),
    (model("adapters: [a]"), "models.m.adapters: expected a mapping of adapter names"),
    (model("adapters: {x: {aliases: [y]}}"), "models.m.adapters.x: needs path"),
    (model("adapters: {x: 3}"), "models.m.adapters.x: expected a string, got 3"),
    (model("adapters: {x: {path: /p, alias: [y]}}"),
     "models.m.adapters.x: unknown key 'alias' (did you mean 'aliases'?)"),
    (model("max_adapters: 0"), "models.m.max_adapters: must be >= 1, got 0"),
    (model("max_lora_rank: 24"),
     "models.m.max_lora_rank: expected one of 1, 8, 16, 32, 64, 128, 256, 320, 512"),
    ("defaults: {max_lora_rank: 2}\n" + model("vram_gb: 8"), "defaults.max_lora_rank: expected one of"),
    ("models:\n  r: {url: 'http://h:1', sleep: 1}\n", "models.r.sleep: not used with url"),
    ("models:\n  r: {url: 'http://h:1', adapters: {a: /p}}\n", "models.r.adapters: not used with url"),
    ("host_memory_gb: 0\n" + model("vram_gb: 8"), "host_memory_gb: must be > 0, got 0"),
    ("host_memory_gb: lots\n" + model("vram_gb: 8"), "host_memory_gb: expected auto or a number > 0"),
    ("ray: {address: 'http://h:1'}\n" + model("vram_gb: 8"),
     "ray.address: expected auto or ray://host:port, got 'http://h:1'"),
    ("ray: {address: 'ray://h'}\n" + model("vram_gb: 8"), "ray.address: expected auto or ray://"),
    ("ray: {namespace: ''}\n" + model("vram_gb: 8"), "ray.namespace: must not be empty"),
    ("ray: {gpu_vram_gb: 0}\n" + model("vram_gb: 8"), "ray.gpu_vram_gb: must be > 0"),
    ("ray: {adress: auto}\n" + model("vram_gb: 8"), "ray: unknown key 'adress' (did you mean"),
    (model("launcher: ray"), "models.m.launcher: ray needs gpus: ray"),
    ("gpus: ray\n" + model("vram_gb: 8"),
     ("models.m.launcher: gpus: ray places models on the cluster's nodes, but this model's "
     "launcher is subprocess")),
    ("gpus: ray\ndefaults: {launcher: docker, image: i}\n" + "models:\n  m: {vram_gb: 8}\n",
     "defaults.launcher: gpus: ray places models"),
    ("gpus: ray\nmodels:\n  m: {launcher: ray}\n", "models.m: launcher: ray needs command"),
    ("defaults: {launcher: docker}\nmodels:\n  m: {vram_gb: 8}\n",
     "models.m: launcher: docker (from defaults.launcher) needs image"),
    ("defaults: {image: i}\nmodels:\n  m: {vram_gb: 8, command: x, image: j}\n",
     "models.m: give only one of command, url or image, got command and image"),
]


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_error_names_the_key_path(text: str, message: str) -> None:
    errors = errors_of(text)
    assert any(error.startswith(message) for error in errors), errors


def test_a_bad_default_is_reported_once_for_all_models() -> None:
    text = "defaults: {sleep: 1, sleep_vram_gb: 9}\nmodels:\n" + "".join(
        f"  m{i}: {{command: x, vram_gb: 8}}\n" for i in range(3))
    assert errors_of(text) == [
        ("defaults.sleep_vram_gb: must be < vram_gb (8): it is what a sleeping server still "
        "holds per GPU, got 9")
    ]


def test_keys_inherited_from_defaults_that_a_model_does_not_use_are_passed_over() -> None:
    config = load("defaults: {image: i, args: [a], node: n1, container_port: 9}\n"
                  f"models:\n  m: {{command: {CMD}}}\n")
    assert config.models["m"].docker is None and config.models["m"].node is None


def test_one_default_per_gpu_set_names_both_models() -> None:
    text = TWO_GPUS + (
        "models:\n  a: {command: x, default: true}\n  b: {command: y, default: true}\n"
        "  c: {command: z, default: true, gpu_ids: [1]}\n"
        "  d: {command: w, default: true, gpu_ids: [1]}\n")
    assert errors_of(text) == [
        ("models.b.default: models.a is already the default for all GPUs; at most one "
        "default per GPU set"),
        ("models.d.default: models.c is already the default for GPUs [1]; at most one "
        "default per GPU set"),
    ]


def test_adapter_names_share_the_namespace_of_models_and_aliases() -> None:
    text = """
        models:
          a: {command: x, aliases: [fast]}
          b:
            command: y
            adapters:
              a: /p/a
              fast: /p/fast
              ok: {path: /p/ok, aliases: [b, ok2, ok2]}
              other: {path: /p/other, aliases: [ok]}
        """
    space = "(models, aliases and adapters share one namespace)"
    assert errors_of(text) == [
        f"models.b.adapters.a: 'a' is already used by models.a {space}",
        f"models.b.adapters.fast: 'fast' is already used by models.a.aliases {space}",
        f"models.b.adapters.ok.aliases: 'b' is already used by models.b {space}",
        f"models.b.adapters.ok.aliases: 'ok2' is listed twice {space}",
        f"models.b.adapters.other.aliases: 'ok' is already used by models.b.adapters.ok {space}",
    ]


def test_allowed_models_names_an_adapter() -> None:
    text = "models:\n  b: {command: y, adapters: {sql: /p}}\n"
    assert errors_of(text, {"ALLOWED_MODELS": "sql"}) == [
        "ALLOWED_MODELS: 'sql' is an adapter; list its base model 'b' instead"
    ]
