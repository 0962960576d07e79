"""The fixtures and hooks of the vLLM suite, from vllm_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``.
"""

from vllm_fixtures import (
    pytest_collection_modifyitems as pytest_collection_modifyitems,
    vllm_python as vllm_python,
    tiny_model as tiny_model,
    vllm_stack as vllm_stack,
    vllm_command as vllm_command,
    vllm_env as vllm_env,
    launch_vllm as launch_vllm,
)
