"""The fixtures and hooks of the vLLM suite, from vllm_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``.
"""

from vllm_fixtures import (
    launch_vllm,
    pytest_collection_modifyitems,
    tiny_model,
    vllm_command,
    vllm_env,
    vllm_python,
    vllm_stack,
)

__all__ = [
    "launch_vllm",
    "pytest_collection_modifyitems",
    "tiny_model",
    "vllm_command",
    "vllm_env",
    "vllm_python",
    "vllm_stack",
]
