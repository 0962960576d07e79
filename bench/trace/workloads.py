"""The three workloads of TRACES.md as pure, seeded generators.

A workload is a list of sessions. A session is closed loop: its first turn is
sent at ``start_s`` and each later turn ``gap_s`` after the previous answer
ended (a person's think time, an agent's tool time). Independent requests (the
``skewed`` workload) are sessions of one turn.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from . import shapes
from .shapes import SHAPES


@dataclass(frozen=True)
class Model:
    name: str
    vram_gb: float
    shape: str  # "code" or "conversation": which Azure size shape its requests follow


@dataclass(frozen=True)
class Turn:
    model: str
    prompt_tokens: int
    output_tokens: int
    stream: bool
    gap_s: float  # after the previous turn's answer ended; 0 for a session's first turn


@dataclass(frozen=True)
class Session:
    start_s: float
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Workload:
    name: str
    gpus_gb: tuple[float, ...]
    host_ram_gb: float
    models: tuple[Model, ...]
    sessions: tuple[Session, ...]
    duration_s: float  # sessions start within it; their later turns may run past it

    @property
    def requests(self) -> int:
        return sum(len(session.turns) for session in self.sessions)

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)


def _turn(rng: random.Random, model: Model, stream_share: float, gap_s: float) -> Turn:
    shape = SHAPES[model.shape]
    return Turn(model.name, shape.prompt.sample(rng), shape.output.sample(rng),
                rng.random() < stream_share, gap_s)


def _arrivals(rng: random.Random, duration_s: float, mean_s: float, cv: float) -> list[float]:
    times: list[float] = []
    now = shapes.gamma_gap(rng, mean_s, cv)
    while now < duration_s:
        times.append(now)
        now += shapes.gamma_gap(rng, mean_s, cv)
    return times


TEAM_MODELS = (  # any two fit on 48 GB, no three do
    Model("chat-a", 16, "conversation"), Model("code-a", 16, "code"),
    Model("chat-b", 17, "conversation"), Model("chat-c", 18, "conversation"),
    Model("code-b", 19, "code"), Model("chat-d", 20, "conversation"),
)


def team(seed: int = 1, duration_s: float = 3 * 3600.0) -> Workload:
    """Chat sessions on six 16-20 GB models sharing one 48 GB GPU."""
    rng = random.Random(f"team-{seed}")
    weights = shapes.zipf_weights(len(TEAM_MODELS), 1.0)
    by_name = {m.name: m for m in TEAM_MODELS}
    sessions = []
    for start in _arrivals(rng, duration_s, 3600.0 / 24, 2.0):
        model = by_name[shapes.pick(rng, list(by_name), weights)]
        turns = [_turn(rng, model, 0.95, 0.0 if index == 0 else shapes.lognormal(rng, 30.0, 1.0))
                 for index in range(shapes.geometric(rng, 5.0))]
        sessions.append(Session(start, tuple(turns)))
    return Workload("team", (48.0,), 128.0, TEAM_MODELS, tuple(sessions), duration_s)


AGENT_MODELS = (  # planner and coder never fit together on 80 GB
    Model("planner", 46, "conversation"), Model("coder", 38, "code"),
    Model("critic", 14, "conversation"),
)
AGENT_OUTPUT_MEDIAN = {"planner": 250.0, "coder": 400.0, "critic": 40.0}
CONTEXT_STEP_TOKENS = 600


def agents(seed: int = 1, duration_s: float = 3600.0) -> Workload:
    """Agent runs: about three rounds of plan, one to three code steps, critic."""
    rng = random.Random(f"agents-{seed}")
    sessions = []
    now = rng.expovariate(40 / 3600.0)
    while now < duration_s:
        context = SHAPES["conversation"].prompt.sample(rng)
        steps = []
        for _ in range(rng.randint(2, 4)):
            steps += ["planner", *["coder"] * rng.randint(1, 3), "critic"]
        turns = []
        for index, name in enumerate(steps):
            output = max(1, round(shapes.lognormal(rng, AGENT_OUTPUT_MEDIAN[name], 0.5)))
            gap = 0.0 if index == 0 else shapes.lognormal(rng, 3.0, 0.8)
            prompt = context + CONTEXT_STEP_TOKENS * index
            turns.append(Turn(name, prompt, output, rng.random() < 0.2, gap))
        sessions.append(Session(now, tuple(turns)))
        now += rng.expovariate(40 / 3600.0)
    return Workload("agents", (80.0,), 128.0, AGENT_MODELS, tuple(sessions), duration_s)


SKEWED_SIZES = (16, 16, 16, 16, 18, 18, 20, 20, 24, 24, 28, 32, 32, 36, 40, 46, 48, 56, 64, 72)


def skewed(seed: int = 1, duration_s: float = 3600.0) -> Workload:
    """Twenty models of 16-72 GB on two 80 GB GPUs, each with its own bursty stream."""
    rng = random.Random(f"skewed-{seed}")
    models = tuple(Model(f"m{index:02d}-{size}g", size, "code" if index % 3 == 2 else "conversation")
                   for index, size in enumerate(SKEWED_SIZES))
    # Popularity ranks are shuffled so the most popular model is not simply the smallest.
    ranked = list(models)
    rng.shuffle(ranked)
    weights = shapes.zipf_weights(len(ranked), 1.1)
    sessions = []
    for model, share in zip(ranked, weights, strict=True):
        for start in _arrivals(rng, duration_s, 1.0 / (0.5 * share), 4.0):
            sessions.append(Session(start, (_turn(rng, model, 0.5, 0.0),)))
    sessions.sort(key=lambda session: session.start_s)
    return Workload("skewed", (80.0, 80.0), 256.0, models, tuple(sessions), duration_s)


WORKLOADS: dict[str, Callable[[int, float], Workload]] = {
    "team": lambda seed, duration: team(seed, duration),
    "agents": lambda seed, duration: agents(seed, duration),
    "skewed": lambda seed, duration: skewed(seed, duration),
}
FULL_DURATION_S = {"team": 3 * 3600.0, "agents": 3600.0, "skewed": 3600.0}
