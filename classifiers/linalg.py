"""Linear-algebra helpers shared by the fitted estimators.

Sparse rows times a dense fitted matrix (``X @ W.T``) is the core of every prediction.
scipy computes it with ``csr_matvecs`` on a C-ordered ``W.T``, copying the whole matrix on every
call when the transpose is not C-ordered. scikit-learn's linear models store ``coef_``
F-ordered (their transpose is already C-ordered), but the out-of-distribution centroids
(classes x words, C-ordered) were copied per call: ~240 us against ~5 us for the product of
one case with a 9 x 53k matrix, ~0.2 of ~0.9 ms per case end to end
(``bench/classifier_speed_ab.py --transposes``).
:class:`TransposedCache` keeps one C-ordered transpose per fitted matrix in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CACHE = "_transposed_cache"


class TransposedCache:
    """Mixin for fitted estimators: :meth:`transposed` returns ``np.ascontiguousarray(m.T)``,
    computed once per matrix object (a refit that replaces the matrix gets a new transpose; an
    F-ordered matrix costs nothing, its transpose is a view).

    The cache is memory only: it is left out of the pickled / skops state, so saved artifacts
    and their sha256 do not depend on whether the model predicted before it was saved.
    """

    def transposed(self, name: str, matrix: np.ndarray) -> np.ndarray:
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = self.__dict__.setdefault(_CACHE, {})
        hit = cache.get(name)
        if hit is None or hit[0] is not matrix:
            hit = (matrix, np.ascontiguousarray(matrix.T))
            cache[name] = hit
        return hit[1]

    def __getstate__(self) -> dict[str, Any]:
        # a copy: object.__getstate__ may hand back the live __dict__
        inherited: dict[str, Any] = super().__getstate__()  # type: ignore[assignment]
        state = dict(inherited)
        state.pop(_CACHE, None)
        return state
