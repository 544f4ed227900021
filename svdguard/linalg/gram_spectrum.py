"""Singular values from the float64 Gram matrix of the short side, certified a posteriori.

A is m×n, k = min(m, n), s_1 ≥ … ≥ s_k its singular values. The Gram route:

    B = AᴴA (k×k) when m ≥ n, else AAᴴ, formed in float64;   λ = eigvalsh(B)
    ŝ_i = √max(λ_i, 0)

costs m·k² (a symmetric rank-k update: half a product) plus (4/3)·k³ for the
eigenvalues, against the 4·m·k² − (4/3)·k³ of the bidiagonalisation an SVD
starts with; measured 1.5–2.7× faster than float64 ``torch.linalg.svdvals`` on
the matrix shapes of MiniLM and BERT-base (``docs/benchmarks.md``). Squaring the singular values squares
the condition number, so the route is only as good as the test below, which
sends the matrix back to the SVD whenever it cannot vouch for the result.

**Error model.** Each computed eigenvalue carries an absolute error
|λ̂_i − s_i²| ≤ δ with

    δ = c·√k·ε₆₄·σ̂_max²        (``tolerances.gram_eigenvalue_error``)

(the rounding of B, |ΔB_ij| ≲ ε·Σ_l |a_li||a_lj|, plus a backward-stable
eigensolver, ≲ ε·‖B‖₂ = ε·σ_max²; c = 4 and the √k from the measured worst
case, which stays below ε·σ_max² from 2×2 to 8192×1024). Then, exactly,

    |ŝ_i − s_i| = |ŝ_i² − s_i²| / (ŝ_i + s_i) ≤ e_i := min(δ/ŝ_i, √δ)

(s_i ≥ 0, and |ŝ − s| ≤ √|ŝ² − s²| for ŝ, s ≥ 0): large singular values are
nearly as accurate as the SVD's, small ones lose digits as (σ_max/ŝ_i)².

**Certificate** (:func:`gram_certified`). With r the report's relative accuracy
(``tolerances.spectrum_report_rtol``) and f the resolution of the storage dtype
(``tolerances.spectrum_storage_floor``: u_w·σ̂_max, below which the stored
entries' own rounding already moves singular values), the Gram result is kept
when

    ŝ_k² ≥ δ                                               σ_min is not rounding of B
    e_1 ≤ max(r/2·ŝ_1, f)  and  e_k ≤ max(r/2·ŝ_k, f)      κ = ŝ_1/ŝ_k within ≈ r relative
    e_i + e_{i+1} ≤ max(r·(ŝ_i − ŝ_{i+1}), f)  for all i     every gap within r relative

(the xDISNA gap of a non-square matrix also counts s_k itself: covered by the
second condition). A rank-deficient, tied or too ill-conditioned matrix fails
it and goes to the SVD; so do non-finite eigenvalues (overflow) and solver
failures.

The computation is numpy's (``a.T @ a`` runs BLAS syrk; ``eigvalsh`` LAPACK
syevd): on one thread it beat torch's product + ``eigvalsh`` by 20–25 % on the
shapes of BERT-base (768×768: 0.071 s against 0.084 s; 3072×768: 0.120 s
against 0.152 s, float64). :func:`gram_eigenvalues` computes complex matrices,
and matrices on a GPU, with torch; ``singular_values`` takes the route on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from svdguard import tolerances
from svdguard.linalg.scaling import largest_magnitude, power_of_two_scale

__all__ = ["gram_certified", "gram_singular_values", "gram_eigenvalues"]

#: max|a_ij| outside [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT] is rescaled by a power of two first:
#: inside it, B = AᴴA can neither overflow (σ_max² ≤ m·n·2^800 ≪ 1.8e308 for any array that
#: fits in memory) nor lose more to underflow than δ (products below 2^-1022 are ≪ ε·σ_max²).
SAFE_EXPONENT = 400


#: Bytes of the float64 block the CPU Gram route converts at a time: the memory it needs
#: beyond the matrix stays bounded, and converting a large float32 A whole costs a fresh
#: float64 copy (page faults). Below glibc's largest mmap threshold (32 MiB), so the block's
#: memory is reused from one matrix to the next, and large enough for BERT-base's 3072×768
#: (18 MiB) in one block. Measured on one thread, Gram matrix of float32 input: 30522×384
#: 0.095 s against 0.130 s converted whole; 3072×768 0.034 s in one block against 0.036 s
#: in two of 16 MiB.
GRAM_BLOCK_BYTES = 24 * 2**20


def _convert(block: np.ndarray, piece: np.ndarray, scale: float) -> None:
    """block = scale·piece in float64."""
    if scale == 1.0:
        np.copyto(block, piece)  # the cast to float64 is exact
    else:  # ×2^e is exact down to the subnormals, far below δ
        np.multiply(piece, scale, out=block, dtype=np.float64)


def _numpy_gram(a: np.ndarray, scale: float, wide: bool) -> np.ndarray:
    """B = Σ_blocks c²·A_bᵀA_b (tall) or Σ c²·A_b A_bᵀ (wide, blocks of columns), in float64.

    When both operands of a product are one buffer, numpy's matmul calls BLAS
    syrk (half the flops of a general product). A float64 ``a`` that needs no
    scaling is multiplied whole, with no copy.
    """
    if a.dtype == np.float64 and scale == 1.0:
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            a = np.ascontiguousarray(a)
        product: np.ndarray = a @ a.T if wide else a.T @ a
        return product
    k, long = min(a.shape), max(a.shape)
    step = max(GRAM_BLOCK_BYTES // (8 * k), 1)
    buffer = np.empty(k * min(step, long))
    if long <= step:  # one block: the float64 copy and B, nothing more
        block = buffer.reshape(a.shape)
        _convert(block, a, scale)
        single: np.ndarray = block @ block.T if wide else block.T @ block
        return single
    gram = np.zeros((k, k))
    part = np.empty((k, k))
    for start in range(0, long, step):
        width = min(step, long - start)
        piece = a[:, start : start + width] if wide else a[start : start + width]
        block = buffer[: k * width].reshape(piece.shape)
        _convert(block, piece, scale)
        if wide:
            np.matmul(block, block.T, out=part)
        else:
            np.matmul(block.T, block, out=part)
        gram += part
    return gram


def gram_eigenvalues(matrix: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(λ, c): λ_1 ≥ … ≥ λ_k of the float64 Gram matrix of the short side of c·``matrix``.

    c is 1, or the power of two that brings max|a_ij| into [½, 1) when the
    entries are outside the safe range (:data:`SAFE_EXPONENT`); the singular
    values are √λ_i / c, taken in that order so that nothing underflows.
    λ is float64 on the CPU.

    Memory on the CPU: a float64 block of at most :data:`GRAM_BLOCK_BYTES` (the
    float64 copy of a smaller matrix) and the k×k Gram matrix, a second one
    while blocks are summed (plus a float32 copy of bfloat16/fp8 input). Raises ``numpy.linalg.LinAlgError`` or
    ``RuntimeError`` when the eigensolver fails.
    """
    wide = matrix.shape[-2] < matrix.shape[-1]
    # Entries of ≤ 32-bit dtypes lie within 2^±150: only 64-bit ones can need a rescaling.
    wide_range = torch.finfo(tolerances.real_dtype(matrix.dtype)).bits >= 64
    scale = (
        power_of_two_scale(largest_magnitude(matrix), safe_exponent=SAFE_EXPONENT)
        if wide_range
        else 1.0
    )
    if matrix.is_complex() or matrix.device.type != "cpu":
        a = matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)
        if scale != 1.0:
            a = a * scale
        gram = a @ a.mH if wide else a.mH @ a
        del a
        lam = torch.linalg.eigvalsh(gram).flip(-1)
        return lam.to(device="cpu", dtype=torch.float64), scale
    stored = matrix.detach()
    if stored.dtype not in (torch.float64, torch.float32, torch.float16):
        stored = stored.to(torch.float32)  # bfloat16, fp8: exact in float32, which numpy has
    gram_np = _numpy_gram(stored.numpy(), scale, wide)  # .numpy() shares memory
    lam_np = np.linalg.eigvalsh(gram_np)[::-1].copy()
    return torch.from_numpy(lam_np), scale


def gram_certified(s: torch.Tensor | np.ndarray, delta: float, floor: float, rtol: float) -> bool:
    """True when singular values ``s`` (descending), each known to within e_i, pass the certificate.

    e_i = min(δ/ŝ_i, √δ) bounds |ŝ_i − s_i| when |λ̂_i − s_i²| ≤ δ (module docstring).
    Kept when ŝ_k² ≥ δ (σ_min stands above the Gram matrix's rounding), e_1, e_k ≤
    max(rtol/2·ŝ, floor) (κ to about rtol) and, for every neighbouring pair,
    e_i + e_{i+1} ≤ max(rtol·(ŝ_i − ŝ_{i+1}), floor).

    Evaluated with numpy on the float64 values (a CPU tensor is viewed, not copied):
    a few vector operations, so that small matrices pay no per-operation overhead.
    """
    a = np.asarray(s, dtype=np.float64)
    if not np.isfinite(a).all() or float(a[-1]) ** 2 < delta:
        return False
    if delta == 0.0:  # the zero matrix, or δ underflowed: every e_i = min(δ/ŝ_i, √δ) = 0
        err = np.zeros_like(a)
    else:  # σ_min² ≥ δ > 0, so every ŝ_i > 0
        err = np.minimum(delta / a, math.sqrt(delta))
    if float(err[0]) > max(rtol / 2 * float(a[0]), floor):
        return False
    if float(err[-1]) > max(rtol / 2 * float(a[-1]), floor):
        return False
    if a.size < 2:
        return True
    allowed = np.maximum(rtol * (a[:-1] - a[1:]), floor)
    return bool((err[:-1] + err[1:] <= allowed).all())


def gram_singular_values(matrix: torch.Tensor, storage: torch.dtype) -> torch.Tensor | None:
    """ŝ_1 ≥ … ≥ ŝ_k from the Gram route (float64, CPU), or None when they are not certified.

    ``storage`` is the dtype the matrix is stored in (it sets the floor f of
    the certificate); ``matrix`` may already be a float64 copy of it. None
    also when the eigensolver fails or returns non-finite values: the caller
    then runs the SVD.
    """
    m, n = matrix.shape[-2:]
    k = min(m, n)
    if k == 0:
        return None
    try:
        lam, scale = gram_eigenvalues(matrix)
    except (np.linalg.LinAlgError, RuntimeError):
        return None
    values = lam.numpy()
    if not np.isfinite(values).all():
        return None
    s = np.sqrt(np.maximum(values, 0.0))  # of the scaled matrix: the certificate is scale-invariant
    sigma_max = float(s[0])
    delta = tolerances.gram_eigenvalue_error(sigma_max, k)
    floor = tolerances.spectrum_storage_floor(storage, sigma_max)
    if not gram_certified(s, delta, floor, tolerances.spectrum_report_rtol()):
        return None
    if scale != 1.0:
        s /= scale
    return torch.from_numpy(s)
