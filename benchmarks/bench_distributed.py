"""Time `inspect` on 2 ranks × 1 thread against 1 rank × 1 thread, and show each rank's share.

    python benchmarks/bench_distributed.py                  # 24 matrices, 512 … 1024
    python benchmarks/bench_distributed.py --matrices 8 --repeat 1   # a quick version

The checkpoint (one .safetensors in a temporary directory) holds ``--matrices``
float32 Gaussian matrices whose sides m run evenly from ``--smallest`` to
``--largest``; every third one is m × m/2 rather than m × m, so that the jobs of
the plan are unequal. Two ways to get the same rows, alternated ``--repeat`` times,
fastest kept:

* ``1 rank``: ``svdguard.inspect`` in this process, 1 CPU thread;
* ``2 ranks``: ``Launch.detect(2).rows(...)``: this process and one spawned rank
  over gloo, 1 CPU thread each; the wall time includes starting the second
  interpreter and the exchange of the rows.

Printed: wall and CPU seconds of each, the wall ratio (target ≤ 0.6 on 2 free
cores), each rank's busy seconds (wall time in its own share), CPU seconds and
planned share of the cost, and whether the rows agree (they must). The CPU
figures do not depend on what else the machine runs: the largest rank's CPU
seconds over the one rank's is the wall ratio two idle cores would give, less
the start of the second interpreter (printed as the start-up and exchange
overhead: the 2-rank wall time minus the longest busy time). The 1-minute load
average is printed beside them: above the number of cores, the ranks share them
with other work and the wall ratio says little.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from svdguard.app.distributed import Launch
from svdguard.app.inspection import inspect
from svdguard.app.threads import limit_cpu_threads


def shapes(matrices: int, smallest: int, largest: int) -> dict[str, tuple[int, int]]:
    """Sides from ``smallest`` to ``largest``; every third matrix m × m/2 (unequal jobs)."""
    found = {}
    for index in range(matrices):
        side = smallest + (largest - smallest) * index // max(matrices - 1, 1)
        found[f"layer.{index:02d}.weight"] = (side, side // 2) if index % 3 == 2 else (side, side)
    return found


def generate(path: Path, matrices: int, smallest: int, largest: int) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        key: torch.randn(shape, generator=g)
        for key, shape in shapes(matrices, smallest, largest).items()
    }
    save_file(tensors, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", type=int, default=24)
    parser.add_argument("--smallest", type=int, default=512)
    parser.add_argument("--largest", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limit_cpu_threads(1)  # torch and numpy's BLAS (the Gram route): one thread, as each rank
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        generate(path, args.matrices, args.smallest, args.largest)
        files = [path]
        one_best = two_best = one_cpu = float("inf")
        launch_best: Launch | None = None
        same = True
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            one = [row.to_dict() for row in inspect(files, device="cpu")]
            one_best = min(one_best, time.perf_counter() - start)
            one_cpu = min(one_cpu, time.process_time() - start_cpu)

            launch = Launch.detect(2, threads=1)
            assert launch is not None
            start = time.perf_counter()
            rows = launch.rows(functools.partial(inspect, files, device="cpu"), files)
            elapsed = time.perf_counter() - start
            if elapsed < two_best:
                two_best, launch_best = elapsed, launch
            same = same and [row.to_dict() for row in rows] == one
        assert launch_best is not None
        busy, cpu, loads = launch_best.busy_s, launch_best.cpu_s, launch_best.loads
        print(
            f"{args.matrices} float32 matrices, sides {args.smallest}…{args.largest}, "
            f"float64 singular values, torch {torch.__version__}, best of {args.repeat}, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )
        print(f"1 rank  × 1 thread: {one_best:7.2f} s wall, {one_cpu:7.2f} s CPU")
        print(f"2 ranks × 1 thread: {two_best:7.2f} s wall   ratio {two_best / one_best:.2f}")
        total = sum(loads)
        for rank, (seconds, used, load) in enumerate(zip(busy, cpu, loads, strict=True)):
            print(
                f"  rank {rank}: busy {seconds:7.2f} s wall, {used:7.2f} s CPU, "
                f"planned {load / total:6.1%} of the cost"
            )
        print(
            f"  largest rank CPU / one rank CPU: {max(cpu) / one_cpu:.2f}; "
            f"start-up and exchange: {two_best - max(busy):.2f} s"
        )
        print(f"rows identical to one process: {same}")


if __name__ == "__main__":
    main()
