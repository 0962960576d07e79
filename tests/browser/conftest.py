"""The fixtures and hooks of the browser suite, from browser_fixtures.py.

They live there, under a name of their own, because mypy checks tests/ as one program and
only one file of it can be the module ``conftest``.
"""

from browser_fixtures import (
    pytest_collection_modifyitems as pytest_collection_modifyitems,
    browser as browser,
    page_and_errors as page_and_errors,
    screenshot as screenshot,
)
