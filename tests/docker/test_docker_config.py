"""What the Docker launcher asks the engine for; no engine needed (runs by default)."""

from __future__ import annotations

import pytest

from vllm_gateway.config import DockerSpec, ModelConfig
from vllm_gateway.config.sizes import parse_size
from vllm_gateway.launchers.base import LaunchError, LaunchSpec
from vllm_gateway.launchers.docker import DockerLauncher
from vllm_gateway.launchers.docker_config import (
    container_config,
    container_name_pattern,
    explain_start_error,
)


def spec_with(docker: DockerSpec, gpu_ids: tuple[int, ...] = (), **model: object) -> LaunchSpec:
    config = ModelConfig(name="m", launcher="docker", docker=docker, **model)  # type: ignore[arg-type]
    return LaunchSpec(model=config, port=41000, gpu_ids=gpu_ids, gpu_memory_utilization=0.45)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8g", 8 << 30),
        ("8G", 8 << 30),
        ("512m", 512 << 20),
        ("1GiB", 1 << 30),
        ("2gb", 2 << 30),
        ("64k", 64 << 10),
        ("1048576", 1 << 20),
        ("1.5g", 3 << 29),
        ("2gi", 2 << 30),
        ("100 m", 100 << 20),
    ],
)
def test_shm_sizes_read_as_docker_reads_them(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "g", "8x", "-1g", "eight"])
def test_bad_shm_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_bad_shm_size_is_a_launch_error_naming_the_model() -> None:
    spec = spec_with(DockerSpec(shm_size="lots"))
    with pytest.raises(LaunchError, match=r"model m: docker\.shm_size"):
        container_config(spec, DockerSpec(shm_size="lots"), "gw")


def test_host_network_request() -> None:
    docker = DockerSpec(
        image="vllm/vllm-openai:v0.11.0",
        args=(
            "--model",
            "/models/m",
            "--port",
            "{port}",
            "--served-model-name",
            "{name}",
            "--gpu-memory-utilization",
            "{gpu_memory_utilization}",
        ),
        volumes=("/srv/models:/models:ro",),
        shm_size="8g",
        ipc="host",
    )
    spec = spec_with(docker, gpu_ids=(2, 3), env={"HF_HUB_OFFLINE": "1"})
    config = container_config(spec, docker, "gw-1")
    assert config["Image"] == "vllm/vllm-openai:v0.11.0"
    assert config["Cmd"] == [
        "--model",
        "/models/m",
        "--port",
        "41000",
        "--served-model-name",
        "m",
        "--gpu-memory-utilization",
        "0.45",
    ]
    assert config["Env"] == ["HF_HUB_OFFLINE=1"]
    assert config["Labels"] == {"vllm-gateway.instance": "gw-1", "vllm-gateway.model": "m"}
    host = config["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert "PortBindings" not in host and "ExposedPorts" not in config
    assert host["Binds"] == ["/srv/models:/models:ro"]
    assert host["ShmSize"] == 8 << 30
    assert host["IpcMode"] == "host"
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["2", "3"], "Capabilities": [["gpu"]]}
    ]


def test_no_gpu_no_device_request_and_bridge_publishes_on_loopback() -> None:
    docker = DockerSpec(network="bridge", container_port=9000)
    config = container_config(spec_with(docker), docker, "gw")
    host = config["HostConfig"]
    assert host["DeviceRequests"] == []
    assert host["NetworkMode"] == "bridge"
    assert host["PortBindings"] == {"9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41000"}]}
    assert config["ExposedPorts"] == {"9000/tcp": {}}
    assert "ShmSize" not in host and "IpcMode" not in host


def test_no_args_leave_the_image_command() -> None:
    docker = DockerSpec()
    assert "Cmd" not in container_config(spec_with(docker), docker, "gw")


def test_engine_refusals_become_advice() -> None:
    where = {"image": "vllm/vllm-openai:latest", "name": "vllm_0", "docker_host": "unix:///s"}
    gpu_spec = spec_with(DockerSpec(), gpu_ids=(0, 1))
    refused = 'could not select device driver "nvidia" with capabilities: [[gpu]]'
    gpu = str(explain_start_error(500, refused, spec=gpu_spec, **where))
    assert "model m (container vllm_0)" in gpu
    assert "refused the GPU request (nvidia, devices 0,1)" in gpu
    assert "NVIDIA Container Toolkit" in gpu and refused in gpu

    missing = str(explain_start_error(404, "No such image: x", spec=gpu_spec, **where))
    assert "image vllm/vllm-openai:latest not found locally" in missing
    assert "docker pull vllm/vllm-openai:latest" in missing

    other = str(explain_start_error(500, "port is already allocated", spec=gpu_spec, **where))
    assert other.endswith("Docker could not start it: port is already allocated")


def test_name_pattern_takes_only_prefix_and_a_number() -> None:
    names = container_name_pattern("vllm")
    assert names.match("vllm_0") and names.match("vllm_12")
    for other in ("vllm_", "vllm_x", "vllm_1_2", "vllm-1", "xvllm_1", "vllm.x_1"):
        assert not names.match(other), other
    assert not container_name_pattern("a.b").match("axb_1")


async def test_unreachable_engine_says_where_it_looked() -> None:
    host = "unix:///nonexistent/vllm-gateway-test/docker.sock"
    launcher = DockerLauncher("vllm", "gw", docker_host=host)
    try:
        with pytest.raises(LaunchError) as caught:
            await launcher.start(spec_with(DockerSpec()))
        assert "Docker engine unreachable at " + host in str(caught.value)
        assert "DOCKER_HOST" in str(caught.value)
        with pytest.raises(LaunchError, match="Docker engine unreachable"):
            await launcher.cleanup_leftovers()
    finally:
        await launcher.close()
