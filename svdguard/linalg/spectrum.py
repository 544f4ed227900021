"""Scalar facts about a spectrum: condition number, singular-value gaps, tied pairs.

All functions take singular values ``s`` of shape ``(..., k)``, sorted descending
as ``torch.linalg.svdvals`` returns them, and work batched.
"""

from __future__ import annotations

import torch


def condition_number(s: torch.Tensor) -> torch.Tensor:
    """κ₂ = σ_max / σ_min, shape ``(...)``; +∞ when σ_min = 0 (also for the zero matrix)."""
    sigma_max, sigma_min = s[..., 0], s[..., -1]
    safe_min = torch.where(sigma_min > 0, sigma_min, torch.ones_like(sigma_min))
    return torch.where(sigma_min > 0, sigma_max / safe_min, torch.full_like(sigma_max, torch.inf))


def singular_gaps(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Separation of each singular value from the rest of the spectrum, shape ``(..., k)``.

    As LAPACK's xDISNA defines it for singular vectors:
    gap_i = min_{j≠i} |s_i − s_j|, and for a non-square matrix (m ≠ n) also s_i
    itself, since the longer side's factor has a null space at singular value 0.
    For k = 1 and a square matrix there is no other value: gap = +∞.
    The angle error of computed singular vector i is bounded by ε·σ_max / gap_i.

    s is sorted, so the nearest other value is a neighbour:
    gap_i = min(s_{i−1} − s_i, s_i − s_{i+1}); O(k) memory, no k×k differences.
    """
    gaps = torch.full_like(s, torch.inf)
    if s.shape[-1] > 1:
        steps = s[..., :-1] - s[..., 1:]  # ≥ 0: s is descending
        gaps[..., :-1] = steps
        gaps[..., 1:] = torch.minimum(gaps[..., 1:], steps)
    return torch.minimum(gaps, s) if m != n else gaps


def tied_pairs(s: torch.Tensor, tol: torch.Tensor | float) -> torch.Tensor:
    """Boolean ``(..., k, k)`` mask of pairs i < j with |s_i − s_j| ≤ tol.

    ``tol`` is a float or a tensor broadcastable to the batch shape ``s.shape[:-1]``.
    """
    k = s.shape[-1]
    diff = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs()
    tol_t = torch.as_tensor(tol, dtype=s.dtype, device=s.device).expand(s.shape[:-1])
    upper = torch.ones(k, k, dtype=torch.bool, device=s.device).triu(1)
    return (diff <= tol_t[..., None, None]) & upper
