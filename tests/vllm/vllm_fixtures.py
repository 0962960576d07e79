"""Fixtures for the suite that runs real vLLM (CPU build) on a tiny local model.

Every test under tests/vllm is marked ``vllm`` here, so the default run
(``-m 'not vllm ...'`` in pyproject.toml) leaves them out; run them with
``pytest -m vllm tests/vllm`` after ``scripts/install_vllm.sh``.

vLLM lives in its own venv (VLLM_PYTHON, else .venv-vllm/bin/python at the
repository root). Where it cannot import vllm, every test here is skipped with
the hint to install it, unless VLLM_TESTS_REQUIRED=1 (CI) makes that a failure.
The check runs lazily, in a session fixture, so a default run that deselects
this suite never pays for importing vLLM.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import free_port
from vllm_proc import VllmServer, VllmStack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NOT_INSTALLED = "vLLM CPU stack not installed: run scripts/install_vllm.sh"
# A reusable model folder; make_tiny_model.py refreshes it when its recipe changed.
SHARED_MODEL_DIR = ROOT / "var" / "tiny-model"
# `import vllm` alone takes ~5 s on a quiet machine; a loaded one can take much longer.
IMPORT_TIMEOUT_S = 300

LaunchVllm = Callable[..., VllmServer]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on before -m deselects by it.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.vllm)


def _vllm_python() -> Path:
    explicit = os.environ.get("VLLM_PYTHON")
    return Path(explicit) if explicit else ROOT / ".venv-vllm" / "bin" / "python"


def _unavailable(reason: str) -> None:
    if os.environ.get("VLLM_TESTS_REQUIRED") == "1":
        pytest.fail(f"{reason} (VLLM_TESTS_REQUIRED=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's interpreter, proven able to import vllm."""
    python = _vllm_python()
    if not python.exists():
        _unavailable(f"{NOT_INSTALLED} (no {python})")
    try:
        done = subprocess.run(
            [str(python), "-c", "import vllm"],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"{NOT_INSTALLED} ({python} -c 'import vllm' took over {IMPORT_TIMEOUT_S} s)")
    else:
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            _unavailable(f"{NOT_INSTALLED} ({python} cannot import vllm: {last})")
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny random Llama model (var/tiny-model when present)."""
    if SHARED_MODEL_DIR.is_dir():
        out = SHARED_MODEL_DIR
    else:
        out = tmp_path_factory.mktemp("tiny-model") / "model"
    done = subprocess.run(
        [str(vllm_python), str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"make_tiny_model.py failed:\n{done.stdout}{done.stderr}", pytrace=False)
    return out


@pytest.fixture(scope="session")
def vllm_stack(vllm_python: Path, tiny_model: Path) -> VllmStack:
    """Builds the vLLM command line and environment for the tiny model.

    ``vllm_stack.command()`` keeps ``{name}`` and ``{port}`` for a gateway
    config; ``vllm_stack.command("tiny", 8123)`` fills them; ``server_env`` is
    what a model's ``env`` should add.
    """
    return VllmStack(python=vllm_python, model_dir=tiny_model)


@pytest.fixture(scope="session")
def vllm_command(vllm_stack: VllmStack) -> Callable[[str, int], list[str]]:
    """``vllm_command(name, port)``: the argv of a vLLM server for the tiny model."""
    return vllm_stack.command


@pytest.fixture(scope="session")
def vllm_env(vllm_stack: VllmStack) -> dict[str, str]:
    """Variables a vLLM server needs on top of the usual environment."""
    return vllm_stack.server_env


@pytest.fixture(scope="module")
def launch_vllm(
    vllm_stack: VllmStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LaunchVllm]:
    """``launch_vllm(name="tiny")`` starts a server directly and waits until it is ready.

    Module-scoped, since each start costs 20-50 s. Whatever is still running at
    the end of the module is stopped through its process group; a group that
    SIGTERM did not clear fails the teardown.
    """
    log_dir = tmp_path_factory.mktemp("vllm-logs")
    started: list[VllmServer] = []

    def launch(name: str = "tiny") -> VllmServer:
        server = VllmServer(vllm_stack, name, free_port(), log_dir)
        started.append(server)
        try:
            server.wait_ready()
        except BaseException:
            server.kill()
            raise
        return server

    yield launch
    problems = []
    for server in started:
        if server.alive_in_group() or server.proc.poll() is None:
            try:
                server.stop()
            except TimeoutError as exc:
                problems.append(f"{server.name}: {exc}")
    if problems:
        pytest.fail("vLLM servers outlived SIGTERM: " + "; ".join(problems), pytrace=False)
