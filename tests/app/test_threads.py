"""One thread knob bounds torch's pool and numpy's BLAS pool (which the Gram route uses)."""

from __future__ import annotations

import numpy  # noqa: F401  (numpy's BLAS must be loaded for threadpoolctl to see it)
import torch
from threadpoolctl import threadpool_info

from svdguard.app.threads import cpu_threads


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_cpu_threads_bounds_both_pools_and_restores_them() -> None:
    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    assert blas_before, "numpy's BLAS pool is not visible"
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
        assert blas_threads() == [1] * len(blas_before)
    assert torch.get_num_threads() == torch_before
    assert blas_threads() == blas_before
