"""Typed configuration of a gateway.

These frozen dataclasses are the contract every other module reads, and their
field defaults are the built-in defaults of the file's keys: the loader starts
from them and never restates one. ``Literal`` types are the one list of each
choice (the loader's messages and checks are derived from them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

LauncherKind = Literal["subprocess", "docker", "ray"]
NetworkMode = Literal["host", "bridge"]
LogFormat = Literal["text", "json"]
SleepLevel = Literal[0, 1, 2]  # 0: sleep off


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_timeout_s: float = 30.0
    max_body_mb: float = 32.0


@dataclass(frozen=True)
class GpuSpec:
    id: int
    vram_gb: float


@dataclass(frozen=True)
class DockerSpec:
    """How to run a model as a container (``launcher: docker``)."""

    image: str = "vllm/vllm-openai:latest"
    # Arguments after the image; same placeholders as ``command``.
    args: tuple[str, ...] = ()
    # "host:container[:mode]" strings, as ``docker run -v`` takes them.
    volumes: tuple[str, ...] = ()
    shm_size: str | None = None
    ipc: str | None = None
    # "host" (default) or "bridge" (the container port is published on 127.0.0.1:{port}).
    network: NetworkMode = "host"
    # Port the server listens on inside the container when network is not host.
    container_port: int = 8000


@dataclass(frozen=True)
class Replicas:
    min: int = 0
    max: int = 1


@dataclass(frozen=True)
class AdapterConfig:
    """A LoRA adapter served by a running base model (``models.<base>.adapters``)."""

    name: str
    base: str
    path: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    name: str
    # Exactly one of command / url / docker is the way to reach the model.
    command: tuple[str, ...] | None = None
    url: str | None = None
    launcher: LauncherKind = "subprocess"
    docker: DockerSpec | None = None
    vram_gb: float = 0.0
    gpu_count: int = 1
    aliases: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    max_concurrent: int = 50
    max_queue: int = 200
    idle_timeout_s: float = 1800.0
    startup_timeout_s: float = 1800.0
    request_timeout_s: float = 600.0
    pinned: bool = False
    forward_authorization: bool = False
    # Sleep tier (vLLM sleep mode): the level an idle or evicted model sleeps at; 0: stop it.
    sleep: SleepLevel = 0
    sleep_vram_gb: float = 1.0  # per GPU, still held by a sleeping server
    weights_gb: float | None = None  # host RAM a level-1 sleeper holds; None: vram_gb
    sleep_timeout_s: float = 0.0  # asleep this long: stopped for good; 0 = never
    wake_check: bool = True  # one-token completion after every wake, compared with the first
    # Seconds a request waits for idle memory before it presses busy holders; None: learned.
    swap_patience_s: float | None = None
    replicas: Replicas = field(default_factory=Replicas)
    scale_up_after_s: float = 5.0
    gpu_ids: tuple[int, ...] | None = None  # None: any GPU
    node: str | None = None  # Ray launcher: only on this node (id, IP or label)
    default: bool = False  # resident default: started at start, returns after an eviction
    restore_after_s: float = 30.0
    vram_auto: bool = False  # vram_gb: auto (vram_gb then holds the estimate until measured)
    adapters: Mapping[str, AdapterConfig] = field(default_factory=dict)
    max_adapters: int = 4
    max_lora_rank: int = 16

    @property
    def managed(self) -> bool:
        """True when the gateway starts and stops this model's server."""
        return self.url is None


@dataclass(frozen=True)
class RetryConfig:
    """Retries of requests that never reached the backend."""

    max_retries: int = 3  # GATEWAY_MAX_RETRIES
    delay_s: float = 1.0  # GATEWAY_RETRY_DELAY
    backoff: float = 1.5  # GATEWAY_RETRY_BACKOFF


@dataclass(frozen=True)
class FaultConfig:
    """How failed starts and sick backends are handled."""

    start_backoff_s: float = 2.0  # first delay after a failed start; doubles
    start_backoff_max_s: float = 60.0
    max_failed_starts: int = 3  # in a row, then held failed until backoff ends or /load
    health_interval_s: float = 2.0  # periodic probe of ready backends
    unhealthy_probes: int = 3  # failed probes in a row before a hung backend is restarted
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this


@dataclass(frozen=True)
class AuthKey:
    name: str
    key: str  # the secret itself, read from key_env or key_file; never logged
    models: tuple[str, ...] | Literal["*"] = "*"
    admin: bool = False
    rate_limit_per_min: int | None = None


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[AuthKey, ...] = ()
    protect_status: bool = False


@dataclass(frozen=True)
class RayConfig:
    address: str = "auto"  # "auto" or "ray://host:10001"
    namespace: str = "vllm-gateway"
    gpu_vram_gb: float | None = None  # a node's GPU size where the node has no NVML


@dataclass(frozen=True)
class NameIndex:
    """The one alias index (llama-swap's ``RealModelName``): a name to what it names.

    Models, aliases, adapters and adapter aliases share one namespace; the loader
    refuses a clash, and where one slips through (a config built in code) the
    first owner keeps the name.
    """

    models: Mapping[str, ModelConfig]
    adapters: Mapping[str, tuple[ModelConfig, AdapterConfig]]

    @classmethod
    def of(cls, models: Mapping[str, ModelConfig]) -> NameIndex:
        names: dict[str, ModelConfig] = dict(models)
        for model in models.values():
            for alias in model.aliases:
                names.setdefault(alias, model)
        adapters: dict[str, tuple[ModelConfig, AdapterConfig]] = {}
        for model in models.values():
            for adapter in model.adapters.values():
                for name in (adapter.name, *adapter.aliases):
                    if name not in names:
                        adapters.setdefault(name, (model, adapter))
        return cls(names, adapters)


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # None: no GPU accounting. "auto": read through NVML at start.
    gpus: tuple[GpuSpec, ...] | Literal["auto", "ray"] | None = None
    max_loaded_models: int | None = None  # GATEWAY_MAX_MODELS_CONCURRENT
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    auth: AuthConfig | None = None
    http_pool_size: int | None = None  # GATEWAY_HTTP_POOL_SIZE; None: sum of max_concurrent
    log_level: str = "INFO"  # LOG_LEVEL
    log_format: LogFormat = "text"
    container_prefix: str = "vllm"  # VLLM_CONTAINER_PREFIX
    # Directory for the state file of started process groups (orphan cleanup).
    state_dir: str | None = None
    # Host RAM level-1 sleepers may hold in all; "auto": total RAM minus 10 %, read at start.
    host_memory_gb: float | Literal["auto"] = "auto"
    ray: RayConfig = field(default_factory=RayConfig)
    # Every name a request may use, to what it names; built once from models.
    index: NameIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", NameIndex.of(self.models))

    def lookup(self, name_or_alias: str) -> ModelConfig | None:
        """The model a request names, by its name or one of its aliases."""
        return self.index.models.get(name_or_alias)

    def lookup_adapter(self, name_or_alias: str) -> tuple[ModelConfig, AdapterConfig] | None:
        """The base model and the adapter a request names, by the adapter's name or alias."""
        return self.index.adapters.get(name_or_alias)
