"""Type aliases for the generator's numpy columns.

Precise dtypes let mypy follow the arithmetic (``float64 / float64`` stays ``float64``) where a
bare ``np.ndarray`` makes every expression ``Any``.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["BoolArray", "FloatArray", "IntArray", "TextArray"]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
TextArray: TypeAlias = npt.NDArray[np.str_]
