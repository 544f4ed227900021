"""One knob for the CPU threads of a run: torch's pool and the BLAS pool numpy loaded.

The spectra of ``inspect`` come from torch (SVD) and from numpy's BLAS/LAPACK (the
float64 Gram route, :mod:`svdguard.linalg.gram_spectrum`). ``torch.set_num_threads``
bounds only the first; numpy's OpenBLAS or MKL starts one thread per core unless told
otherwise, so ``--threads 1`` or ``--jobs N`` (one thread per rank) would still
oversubscribe a shared machine. threadpoolctl sets the limit of whichever BLAS
library numpy has loaded, at run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cpu_threads", "limit_cpu_threads"]


def limit_cpu_threads(threads: int) -> None:
    """Use at most ``threads`` CPU threads in torch and in numpy's BLAS from now on."""
    import numpy  # noqa: F401  (load numpy's BLAS so that its pool is found and limited)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """:func:`limit_cpu_threads` for the duration of a ``with`` block; both pools restored after."""
    import numpy  # noqa: F401  (see limit_cpu_threads)
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    limiter = threadpool_limits(limits=threads, user_api="blas")
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        limiter.restore_original_limits()
