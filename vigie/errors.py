"""The root of Vigie's exceptions, and the configuration error.

Every package keeps its own tree (the connectors' ``FeedError``, the store's ``StoreError``, the
rule language's ``RuleError``, the engine's ``EngineError``); each root derives from
``VigieError``, so that a caller (the command line, the service) can catch everything Vigie
raises on purpose in one place and tell it from a bug. A leaf: imports nothing of the project.

>>> error = ConfigurationError("VIGIE_TIMEZONE", "Mars/Olympus", "a time zone name")
>>> print(error)
VIGIE_TIMEZONE='Mars/Olympus': expected a time zone name
>>> isinstance(error, VigieError) and isinstance(error, ValueError)
True
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "VigieError"]


class VigieError(Exception):
    """Root of every error Vigie raises on purpose (anything else is a bug)."""


class ConfigurationError(VigieError, ValueError):
    """A setting has a value Vigie cannot use: names the variable, the value, what is expected.

    Also a ``ValueError``, as the readers of each setting raised before the settings were
    gathered in ``vigie.settings``.
    """

    def __init__(self, variable: str, value: str, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r}: expected {expected}")
