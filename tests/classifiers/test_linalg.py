"""classifiers.linalg: C-ordered transposes cached per fitted matrix, kept out of the state."""

from __future__ import annotations

import pickle

import numpy as np

from classifiers.linalg import TransposedCache


class Holder(TransposedCache):
    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix_ = matrix


def test_transposed_is_a_c_ordered_copy_computed_once_per_matrix() -> None:
    holder = Holder(np.arange(12, dtype=np.float64).reshape(3, 4))
    first = holder.transposed("m", holder.matrix_)
    assert first.flags.c_contiguous
    assert np.array_equal(first, holder.matrix_.T)
    assert holder.transposed("m", holder.matrix_) is first
    # a refit replaces the matrix object: the cache must not serve the old transpose
    holder.matrix_ = np.ones((2, 5))
    second = holder.transposed("m", holder.matrix_)
    assert second.shape == (5, 2)
    assert np.array_equal(second, holder.matrix_.T)


def test_cache_is_left_out_of_the_pickled_state() -> None:
    holder = Holder(np.eye(3))
    holder.transposed("m", holder.matrix_)
    state = holder.__getstate__()
    assert "_transposed_cache" not in state
    assert "_transposed_cache" in holder.__dict__
    restored = pickle.loads(pickle.dumps(holder))
    assert "_transposed_cache" not in restored.__dict__
    assert np.array_equal(restored.matrix_, np.eye(3))
