"""The fixtures and hooks of the browser suite, from browser_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``.
"""

from browser_fixtures import (
    browser,
    page_and_errors,
    pytest_collection_modifyitems,
    screenshot,
)

__all__ = [
    "browser",
    "page_and_errors",
    "pytest_collection_modifyitems",
    "screenshot",
]
