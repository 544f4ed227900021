"""Forward+backward time of svdguard.functional.polar / gram_inv_sqrt against plain autograd.

The baseline is the same function composed from torch.linalg.svd's factors
(U Vᴴ, and V diag((s² + eps)^{-1/2}) Vᴴ), differentiated by torch's generic SVD
backward. Both run in the same process, interleaved, on the same Gaussian
inputs (well-separated singular values, so both are correct), with the loss
⟨W, f(A)⟩, on a batch of small matrices, a square and a tall one. Prints
medians over the repeats and the ratio svdguard/torch; the figures are only as
steady as the machine is idle:

    python benchmarks/bench_functional.py [--repeats 15] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from svdguard import functional

CASES = [("256 x 32x32", (256, 32, 32)), ("512x512", (512, 512)), ("4096x512", (4096, 512))]
EPS_WHITEN = 1e-3  # gram_inv_sqrt regularization (a parameter of the function, not a tolerance)


def plain_polar(a: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def plain_gram_inv_sqrt(a: torch.Tensor) -> torch.Tensor:
    _, s, vh = torch.linalg.svd(a, full_matrices=False)  # square or tall: no complement term
    return (vh.mH * torch.rsqrt(s * s + EPS_WHITEN).unsqueeze(-2)) @ vh


FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "polar": (functional.polar, plain_polar),
    "gram_inv_sqrt": (lambda a: functional.gram_inv_sqrt(a, EPS_WHITEN), plain_gram_inv_sqrt),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable, a: torch.Tensor, w: torch.Tensor) -> float:
    x = a.clone().requires_grad_()
    sync(a.device)
    t0 = time.perf_counter()
    (w * fn(x)).sum().backward()
    sync(a.device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats (median of forward+backward)"
    )
    print(f"{'function':<15}{'case':<13}{'dtype':<9}{'torch':>11}{'svdguard':>11}{'ratio':>8}")
    for name, (ours, plain) in FUNCTIONS.items():
        for label, shape in CASES:
            for dtype in (torch.float32, torch.float64):
                g = torch.Generator().manual_seed(0)
                a = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)
                out_shape = plain(a).shape  # gram_inv_sqrt of an m×n matrix is n×n
                w = torch.randn(*out_shape, generator=g, dtype=torch.float64).to(dtype).to(device)
                for fn in (plain, ours):  # warm-up
                    time_once(fn, a, w)
                t_plain, t_ours = [], []
                for _ in range(args.repeats):
                    t_plain.append(time_once(plain, a, w))
                    t_ours.append(time_once(ours, a, w))
                mp, mo = statistics.median(t_plain), statistics.median(t_ours)
                print(
                    f"{name:<15}{label:<13}{str(dtype)[6:]:<9}{mp * 1e3:>9.2f}ms"
                    f"{mo * 1e3:>9.2f}ms{mo / mp:>8.2f}"
                )


if __name__ == "__main__":
    main()
