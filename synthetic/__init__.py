"""The synthetic French hospital generator (``vigie.synthetic.generator``).

A generator of feeds and ground truth for tests, the demo and benchmarks; not a feed reader.
"""

from vigie.synthetic.generator import (
    DEFAULT_START,
    FORMATS,
    GenerationSummary,
    generate,
    hospital_tables,
)

__all__ = [
    "DEFAULT_START",
    "FORMATS",
    "GenerationSummary",
    "generate",
    "hospital_tables",
]
