"""What the Docker launcher asks the engine for, as pure functions.

Kept apart from the launcher so that the request a model's ``docker:`` section
turns into can be read and tested without an engine. The body is the one the
Engine API's ``POST /containers/create`` takes (API 1.41, Docker 20.10+).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..config import DockerSpec
from ..config.sizes import parse_size
from .base import LaunchError, LaunchSpec

LABEL_INSTANCE = "vllm-gateway.instance"
LABEL_MODEL = "vllm-gateway.model"


def format_args(args: tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """Fill ``{port}``-style placeholders in each argument, as for ``command``."""
    return [arg.format_map(values) for arg in args]


def device_requests(gpu_ids: tuple[int, ...]) -> list[dict[str, Any]]:
    """The GPU request ``docker run --gpus '"device=0,1"'`` sends; none without GPUs.

    The engine's NVIDIA driver exposes exactly these devices in the container
    (and sets NVIDIA_VISIBLE_DEVICES there itself).
    """
    if not gpu_ids:
        return []
    return [
        {
            "Driver": "nvidia",
            "DeviceIDs": [str(g) for g in gpu_ids],
            "Capabilities": [["gpu"]],
        }
    ]


def container_env(spec: LaunchSpec) -> list[str]:
    """The model's environment, then the gateway's extra variables, as ``KEY=VALUE``.

    CUDA_VISIBLE_DEVICES is deliberately not set, unlike for a local process:
    the device request already hides every other GPU, and inside the container
    the granted GPUs are numbered from 0, so host ids would point at nothing.
    """
    env = dict(spec.model.env)
    env.update(spec.env)
    return [f"{key}={value}" for key, value in env.items()]


def container_config(spec: LaunchSpec, docker: DockerSpec, instance_id: str) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for one model server."""
    host_config: dict[str, Any] = {
        # docker-init as PID 1: SIGTERM reaches the server as it would a local
        # process (a bare PID 1 ignores signals it has no handler for), and the
        # server's exited worker processes are reaped.
        "Init": True,
        "Binds": list(docker.volumes),
        "DeviceRequests": device_requests(spec.gpu_ids),
    }
    if docker.shm_size is not None:
        try:
            host_config["ShmSize"] = parse_size(docker.shm_size)
        except ValueError as exc:
            raise LaunchError(f"model {spec.model.name}: docker.shm_size: {exc}") from None
    if docker.ipc is not None:
        host_config["IpcMode"] = docker.ipc
    config: dict[str, Any] = {
        "Image": docker.image,
        "Env": container_env(spec),
        "Labels": {LABEL_INSTANCE: instance_id, LABEL_MODEL: spec.model.name},
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }
    if docker.args:
        # Without arguments the image's own CMD applies, as with `docker run IMAGE`.
        config["Cmd"] = format_args(docker.args, spec.placeholders())
    if docker.network == "host":
        # The server itself listens on {port}, on the host's loopback too.
        host_config["NetworkMode"] = "host"
    else:
        # Any other network: the server listens on container_port inside, and
        # the engine publishes it on the host's loopback only, at {port}.
        port_key = f"{docker.container_port}/tcp"
        host_config["NetworkMode"] = docker.network
        host_config["PortBindings"] = {
            port_key: [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]
        }
        config["ExposedPorts"] = {port_key: {}}
    return config


def container_name_pattern(prefix: str) -> re.Pattern[str]:
    """Names this launcher gives: ``{prefix}_{n}``, n a slot number."""
    return re.compile(rf"^{re.escape(prefix)}_(\d+)$")


def explain_start_error(
    status: int, message: str, *, spec: LaunchSpec, image: str, name: str, docker_host: str
) -> LaunchError:
    """Turn the engine's refusal to create or start a container into advice."""
    what = f"model {spec.model.name} (container {name})"
    lowered = message.lower()
    if status == 404 and "image" in lowered:
        return LaunchError(
            f"{what}: image {image} not found locally on the Docker engine at {docker_host}; "
            f"the gateway never pulls: run `docker pull {image}` there (engine said: {message})"
        )
    if spec.gpu_ids and any(word in lowered for word in ("device driver", "nvidia", "gpu")):
        ids = ",".join(map(str, spec.gpu_ids))
        return LaunchError(
            f"{what}: the Docker engine refused the GPU request (nvidia, devices {ids}); "
            f"is the NVIDIA Container Toolkit installed on the engine's host? "
            f"Engine said: {message}"
        )
    return LaunchError(f"{what}: Docker could not start it: {message}")
