"""The gateway's configuration: typed settings, and the loader that builds them from YAML.

``schema`` holds the frozen dataclasses every other module reads (and the one
source of each built-in default); ``load_config`` reads a file, applies the
precedence rules (command-line flag > environment variable > the file's
``defaults`` > built-in default; a model's own setting wins for that model) and
raises one :class:`ConfigError` with every problem, each naming its key path.
"""

from .errors import ConfigError
from .load import load_config
from .schema import (
    AdapterConfig,
    AuthConfig,
    AuthKey,
    DockerSpec,
    FaultConfig,
    GatewayConfig,
    GpuSpec,
    LauncherKind,
    ModelConfig,
    RayConfig,
    Replicas,
    RetryConfig,
    ServerConfig,
    SleepLevel,
)

__all__ = [
    "AdapterConfig",
    "AuthConfig",
    "AuthKey",
    "ConfigError",
    "DockerSpec",
    "FaultConfig",
    "GatewayConfig",
    "GpuSpec",
    "LauncherKind",
    "ModelConfig",
    "RayConfig",
    "Replicas",
    "RetryConfig",
    "ServerConfig",
    "SleepLevel",
    "load_config",
]
