"""The one error the loader raises."""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(Exception):
    """Everything wrong with a configuration, one ``"where: what"`` line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)
