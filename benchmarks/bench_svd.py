"""Forward and backward time of ``svdguard.svd`` (method="auto") against ``torch.linalg.svd``.

Both run in the same process, interleaved, on the same inputs and the same
gauge-invariant loss L = ⟨W₁, U Vᴴ⟩ + ⟨W₂, U diag(S) Vᴴ⟩ + Σ S (so all three
upstream gradients are non-zero). Prints medians and the ratio svdguard/torch;
run on an idle machine for stable figures:

    python benchmarks/bench_svd.py [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import svdguard

CASES = [("256 x 16x16", (256, 16, 16)), ("512x512", (512, 512)), ("2048x256", (2048, 256))]


def loss_of(factors, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    U, S, Vh = factors
    return (w1 * (U @ Vh)).sum() + (w2 * ((U * S.unsqueeze(-2)) @ Vh)).sum() + S.sum()


def time_once(svd_fn, a: torch.Tensor, w1, w2) -> tuple[float, float]:
    x = a.clone().requires_grad_()
    t0 = time.perf_counter()
    loss = loss_of(svd_fn(x), w1, w2)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_svd = lambda x: torch.linalg.svd(x, full_matrices=False)  # noqa: E731
    ours = lambda x: svdguard.svd(x, full_matrices=False)  # noqa: E731
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats (median)"
    )
    print(
        f"{'case':<14}{'dtype':<9}{'fwd torch':>11}{'fwd ours':>11}{'bwd torch':>11}{'bwd ours':>11}"
        f"{'bwd ratio':>11}{'total ratio':>13}"
    )
    for label, shape in CASES:
        for dtype in (torch.float32, torch.float64):
            g = torch.Generator().manual_seed(0)
            a = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            w1 = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            w2 = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            for fn in (torch_svd, ours):  # warm-up
                time_once(fn, a, w1, w2)
            samples: dict[str, list[tuple[float, float]]] = {"torch": [], "ours": []}
            for _ in range(args.repeats):
                samples["torch"].append(time_once(torch_svd, a, w1, w2))
                samples["ours"].append(time_once(ours, a, w1, w2))
            med = {
                name: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
                for name, v in samples.items()
            }
            (ft, bt), (fo, bo) = med["torch"], med["ours"]
            print(
                f"{label:<14}{str(dtype)[6:]:<9}{ft * 1e3:>9.2f}ms{fo * 1e3:>9.2f}ms{bt * 1e3:>9.2f}ms"
                f"{bo * 1e3:>9.2f}ms{bo / bt:>11.2f}{(fo + bo) / (ft + bt):>13.2f}"
            )


if __name__ == "__main__":
    main()
