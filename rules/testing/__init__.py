"""Rule tests as data: YAML case files (``cases``) and their runner (``runner``).

``vigie rules test PACK... [TESTS...]`` calls ``vigie.rules.testing.runner.test_command``.
"""

__all__: list[str] = []
