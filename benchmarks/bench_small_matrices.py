"""Per-tensor overhead of `svdguard inspect`: many small matrices, whole processes.

    python benchmarks/bench_small_matrices.py                  # 1000 matrices 64×64, 3 rounds
    python benchmarks/bench_small_matrices.py --count 200 --size 32

A safetensors file of ``--count`` random ``--size``×``--size`` float32 matrices
is written to a temporary directory. Two commands, each a fresh Python process
on one thread (torch, OpenBLAS, MKL), alternated ``--repeat`` times, fastest
kept; the wall time includes interpreter start and imports:

* ``svdguard``: ``python -m svdguard inspect FILE --threads 1 --format json -o OUT --force``;
* ``loop``: ``safe_open`` + ``torch.linalg.svdvals(t.double())`` per tensor.

Printed: both times and the ratio svdguard / loop (target ≤ 1.1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOP = """
import sys, torch
from safetensors import safe_open
torch.set_num_threads(1)
with safe_open(sys.argv[1], framework="pt") as handle:
    for key in handle.keys():
        torch.linalg.svdvals(handle.get_tensor(key).double())
"""


def generate(path: Path, count: int, size: int) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {f"m{i:05d}": torch.randn(size, size, generator=g) for i in range(count)}
    save_file(tensors, str(path))


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: findings reported
        raise RuntimeError(f"{command[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="matrices in the file")
    parser.add_argument("--size", type=int, default=64, help="rows and columns of each")
    parser.add_argument("--repeat", type=int, default=3, help="alternated runs; fastest kept")
    args = parser.parse_args()

    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.safetensors"
        generate(path, args.count, args.size)
        out = Path(directory) / "report.json"
        commands = {
            "loop": [sys.executable, "-c", LOOP, str(path)],
            "svdguard": [sys.executable, "-m", "svdguard", "inspect", str(path), "--threads", "1"]
            + ["--format", "json", "-o", str(out), "--force"],
        }
        best = dict.fromkeys(commands, float("inf"))
        for _ in range(args.repeat):
            for name, command in commands.items():
                best[name] = min(best[name], timed(command, env))
    print(
        f"{args.count} matrices {args.size}×{args.size} float32, one thread, "
        f"fastest of {args.repeat} alternated runs (whole processes)"
    )
    for name, seconds in best.items():
        print(f"{name:<10} {seconds:6.2f} s")
    print(f"ratio svdguard / loop: {best['svdguard'] / best['loop']:.2f}")


if __name__ == "__main__":
    main()
