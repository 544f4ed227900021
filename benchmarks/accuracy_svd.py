"""Accuracy of ``svdguard.svd``'s backward, per method, against independent references.

Two tables, both in float64 unless stated:

1. Near ties. A 5×5 matrix U diag(3, 2 + gap, 2, 1, 0.5) Vᵀ (Haar-random U, V,
   seed 0) for gaps 1e-3 … 1e-12 and 0 (an exact tie), and two losses:
   polar ⟨W, U Vᴴ⟩ (reference: fourth-order central differences of U Vᴴ
   computed by torch.linalg.svd, a function that stays smooth at the tie) and
   cube ⟨W, U diag(S³) Vᴴ⟩ = ⟨W, A Aᵀ A⟩ (reference: autograd through the
   matrix products, no SVD involved).
2. Rank-deficient matrices whose zero singular values come out of the SVD at
   rounding level, with the loss ⟨W, U diag(S) Vᴴ⟩ = ⟨W, A⟩, whose gradient is
   exactly W.

Each entry is ‖g − g_ref‖_F / ‖g_ref‖_F. Every method of
``svdguard.linalg.svd.METHODS`` is a column (``native`` is torch's own backward);
``trivialize`` is left out, it equals ``auto`` on these well-conditioned inputs.

    python benchmarks/accuracy_svd.py [--threads 1]
"""

from __future__ import annotations

import argparse
import math

import torch

import svdguard
from svdguard.linalg.svd import METHODS

GAPS = (1e-3, 1e-6, 1e-9, 1e-12, 0.0)
COLUMNS = tuple(m for m in METHODS if m != "trivialize")


def haar(size: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(-2)


def with_spectrum(values: list[float], m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(values) Vᵀ, m×n, built in float64."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, v = haar(m, g)[:, :k], haar(n, g)[:, :k]
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.mT


def central_difference(f, a: torch.Tensor) -> torch.Tensor:
    """Fourth-order central differences of the scalar f at a (float64), step ε^(1/5)."""
    h = torch.finfo(torch.float64).eps ** 0.2
    grad = torch.empty_like(a)
    for idx in range(a.numel()):
        e = torch.zeros_like(a).reshape(-1)
        e[idx] = 1.0
        e = e.reshape(a.shape)
        grad.view(-1)[idx] = (
            8 * (f(a + h * e) - f(a - h * e)) - (f(a + 2 * h * e) - f(a - 2 * h * e))
        ) / (12 * h)
    return grad


def gradient(method: str, a: torch.Tensor, loss) -> torch.Tensor:
    x = a.clone().requires_grad_()
    U, S, Vh = svdguard.svd(x, full_matrices=False, method=method)
    loss(U, S, Vh).backward()
    assert x.grad is not None
    return x.grad


def rel(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(g.double() - ref) / torch.linalg.norm(ref))


def fmt(x: float) -> str:
    return f"{x:.1e}" if math.isfinite(x) else "nan/inf"


def near_tie_table() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 5, dtype=torch.float64, generator=g)
    polar = lambda U, S, Vh: (w * (U @ Vh)).sum()  # noqa: E731
    cube = lambda U, S, Vh: (w * ((U * S**3) @ Vh)).sum()  # noqa: E731

    def polar_value(b: torch.Tensor) -> torch.Tensor:
        u, _, vh = torch.linalg.svd(b)
        return (w * (u @ vh)).sum()

    print("| gap | loss | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for gap in GAPS:
        a = with_spectrum([3.0, 2.0 + gap, 2.0, 1.0, 0.5], 5, 5, seed=0)
        ref_polar = central_difference(polar_value, a)
        x = a.clone().requires_grad_()
        (w * (x @ x.mT @ x)).sum().backward()
        ref_cube = x.grad
        assert ref_cube is not None
        label = "0 (tie)" if gap == 0 else f"{gap:.0e}"
        for name, loss, ref in (("polar", polar, ref_polar), ("cube", cube, ref_cube)):
            cells = [fmt(rel(gradient(method, a, loss), ref)) for method in COLUMNS]
            print(f"| {label} | {name} | " + " | ".join(cells) + " |")


def rank_deficient_table() -> None:
    cases = [
        ("6×4, rank 3", [3.0, 2.0, 1.0, 0.0], 6, 4),
        ("4×6, rank 3", [3.0, 2.0, 1.0, 0.0], 4, 6),
        ("5×5, rank 3", [3.0, 2.0, 1.0, 0.0, 0.0], 5, 5),
    ]
    print("| matrix | dtype | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for label, values, m, n in cases:
        for dtype in (torch.float64, torch.float32):
            a = with_spectrum(values, m, n, seed=2).to(dtype)
            w = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
            wd = w.to(dtype)

            def loss(U, S, Vh, wd=wd):
                return (wd * ((U * S.unsqueeze(-2)) @ Vh)).sum()

            cells = [fmt(rel(gradient(method, a, loss), w)) for method in COLUMNS]
            print(f"| {label} | {str(dtype)[6:]} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, svdguard {svdguard.__version__}\n")
    near_tie_table()
    print()
    rank_deficient_table()


if __name__ == "__main__":
    main()
