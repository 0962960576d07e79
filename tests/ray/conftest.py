"""The fixtures of the Ray suite, from ray_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``; the suite's helpers come from there too.
"""

from ray_fixtures import mark, ray_cluster_factory, ray_gateway, shared_cluster

__all__ = ["mark", "ray_cluster_factory", "ray_gateway", "shared_cluster"]
