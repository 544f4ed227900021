"""What ``svdguard.guard`` costs: the same torch calls inside and outside the block.

Measured in one process, interleaved (outside, inside, outside, ...), medians of
``--repeats`` rounds, each round timing a batch of ``--calls`` calls:

* small matmul: 1000 × (8×8 @ 8×8): a torch call the guard does not route; the
  difference is the mode's dispatch, paid by every torch call in the block;
* svd forward, no grad: ``torch.linalg.svd`` of a 16×16 matrix without autograd:
  routed straight back to torch (looked up, then called);
* svd forward, grad: the same with ``requires_grad``: svdguard.svd's forward (the
  same LAPACK call inside an autograd.Function);
* svd fwd+bwd, grad: forward and backward of ⟨W, U Vᴴ⟩ + Σ S.

Prints the per-call time outside and inside and their difference and ratio:

    python benchmarks/bench_guard.py [--repeats 21] [--calls 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from svdguard.guard_mode import guard
from svdguard.linalg.svd import svd


class _EmptyMode(TorchFunctionMode):
    """The mechanism alone: a mode that passes every call through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def per_call_seconds(body: Callable[[], object], calls: int, context: Any) -> float:
    with context:
        start = time.perf_counter()
        for _ in range(calls):
            body()
        return (time.perf_counter() - start) / calls


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


Case = tuple[Callable[[], object], Callable[[], object] | None, int]


def cases(calls: int) -> dict[str, Case]:
    """label → (the torch code, the same through svdguard.svd directly or None, calls per round)."""
    g = torch.Generator().manual_seed(0)
    a8, b8 = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    m16 = torch.randn(16, 16, generator=g, dtype=torch.float64)
    w16 = torch.randn(16, 16, generator=g, dtype=torch.float64)
    leaf = m16.clone().requires_grad_(True)

    def svd_fwd_bwd(decompose: Callable[..., Any]) -> None:
        U, S, Vh = decompose(leaf)
        ((w16 * (U @ Vh)).sum() + S.sum()).backward()

    few = max(calls // 10, 1)
    return {
        "small matmul": (lambda: a8 @ b8, None, calls),
        "svd forward, no grad": (lambda: torch.linalg.svd(m16), None, few),
        "svd forward, grad": (
            lambda: torch.linalg.svd(leaf),
            lambda: svd(leaf, full_matrices=True),
            few,
        ),
        "svd fwd+bwd, grad": (
            lambda: svd_fwd_bwd(torch.linalg.svd),
            lambda: svd_fwd_bwd(lambda x: svd(x, full_matrices=True)),
            few,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats} rounds"
    )
    print(
        "outside: plain torch; inside: in a guard(); reference: the same work without the\n"
        "guard's own code (an empty TorchFunctionMode, or svdguard.svd called directly);\n"
        "guard cost = inside - reference, per call."
    )
    header = (
        f"{'case':<22}{'outside':>10}{'inside':>10}{'ratio':>7}{'reference':>11}{'guard cost':>12}"
    )
    print(header)
    for label, (body, direct, calls) in cases(args.calls).items():
        timings: dict[str, list[float]] = {"outside": [], "inside": [], "reference": []}
        for _ in range(args.repeats + 1):  # the first round warms up every path
            timings["outside"].append(per_call_seconds(body, calls, _Nothing()))
            timings["inside"].append(per_call_seconds(body, calls, guard()))
            reference = (
                per_call_seconds(body, calls, _EmptyMode())
                if direct is None
                else per_call_seconds(direct, calls, _Nothing())
            )
            timings["reference"].append(reference)
        out_s, in_s, ref_s = (statistics.median(t[1:]) * 1e6 for t in timings.values())
        print(
            f"{label:<22}{out_s:>8.2f}µs{in_s:>8.2f}µs{in_s / out_s:>7.2f}"
            f"{ref_s:>9.2f}µs{in_s - ref_s:>+10.2f}µs"
        )


if __name__ == "__main__":
    main()
