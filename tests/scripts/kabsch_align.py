"""Kabsch alignment as a third-party library writes it: ``svd`` bound at import time."""

import torch
from torch.linalg import svd


def kabsch_residual(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """source (centred) rotated onto target (centred) minus target, with the optimal rotation.

    H = Xᵀ Y = U S Vᴴ, R = U diag(1, …, 1, det(U Vᴴ)) Vᴴ minimises ‖X R − Y‖ over rotations.
    """
    x = source - source.mean(dim=0)
    y = target - target.mean(dim=0)
    u, _, vh = svd(x.mT @ y)
    flip = torch.ones(x.shape[-1], dtype=x.dtype)
    flip[-1] = torch.linalg.det(u @ vh).sign()
    rotation = (u * flip) @ vh
    return x @ rotation - y
