"""The fixtures and hooks of the Docker suite, from docker_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``.
"""

from docker_fixtures import (
    docker_host,
    engine,
    fake_image,
    launcher,
    make_launcher,
    prefix,
)

__all__ = [
    "docker_host",
    "engine",
    "fake_image",
    "launcher",
    "make_launcher",
    "prefix",
]
