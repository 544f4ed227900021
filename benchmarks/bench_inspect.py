"""Time `svdguard inspect` on a BERT-base-shaped checkpoint against bare SVD loops.

    python benchmarks/bench_inspect.py                 # the full model (~0.4 GB, about a minute a pass)
    python benchmarks/bench_inspect.py --layers 1 --vocab 3000   # a quick version
    python benchmarks/bench_inspect.py --checkpoint model.safetensors   # a file you have

The checkpoint (written to a temporary directory) has BERT-base's matrix shapes:
a 30522×768 token embedding and, per layer, four 768×768 attention matrices, a
3072×768 and a 768×3072 feed-forward matrix; float32, safetensors, BERT's
N(0, 0.02²) initialisation. Three ways to get the singular values of all of it,
each in its own fresh process (so that its peak RSS is its own), alternated
``--repeat`` times, fastest kept:

* ``svdguard``: the CLI in-process (``inspect PATH --format json --device cpu``,
  stdout captured): loading, checks, float64 SVDs, diagnostics, JSON;
* ``torch``: ``safe_open`` + ``torch.linalg.svdvals(t.double())`` per tensor;
* ``torch-tall``: the same on the tall orientation (``t.mT`` when wide), as
  svdguard does: torch's CPU svdvals is several times slower on wide matrices;
* ``numpy``: ``safe_open`` + ``numpy.linalg.svd(t, compute_uv=False)`` in float64.

Printed: seconds, ratio to the torch loop (target for svdguard ≤ 1.15; its
overhead proper is the ratio to torch-tall) and peak RSS beside the largest
tensor's float64 size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTERMEDIATE = 768, 3072


def shapes(layers: int, vocab: int) -> dict[str, tuple[int, int]]:
    """The matrix shapes of a BERT-base encoder with ``layers`` layers."""
    found = {"embeddings.word_embeddings.weight": (vocab, HIDDEN)}
    for i in range(layers):
        prefix = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            found[f"{prefix}attention.self.{name}.weight"] = (HIDDEN, HIDDEN)
        found[f"{prefix}attention.output.dense.weight"] = (HIDDEN, HIDDEN)
        found[f"{prefix}intermediate.dense.weight"] = (INTERMEDIATE, HIDDEN)
        found[f"{prefix}output.dense.weight"] = (HIDDEN, INTERMEDIATE)
    return found


def generate(path: Path, layers: int, vocab: int) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        key: torch.randn(shape, generator=g) * 0.02 for key, shape in shapes(layers, vocab).items()
    }
    save_file(tensors, str(path))


def current_rss() -> int:
    """Resident set size now (VmRSS of /proc/self/status), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(variant: str, path: Path, threads: int) -> dict[str, float]:
    """Run one variant in this (fresh) process; seconds exclude the imports."""
    import numpy as np
    import torch
    from safetensors import safe_open

    torch.set_num_threads(threads)
    if variant == "svdguard":
        from typer.testing import CliRunner

        # The command imports these when it runs; import them here so that the timing
        # excludes imports for svdguard as for the loops.
        import svdguard.app.inspection  # noqa: F401
        import svdguard.cli.render_inspect  # noqa: F401
        from svdguard.cli.app import app

        runner = CliRunner()
    baseline = current_rss()  # after the imports: what the run itself adds is peak − this
    if variant == "svdguard":
        start = time.perf_counter()
        args = ["inspect", str(path), "--format", "json", "--device", "cpu", "--isolated"]
        result = runner.invoke(app, [*args, "--threads", str(threads)])
        seconds = time.perf_counter() - start
        if result.exit_code not in (0, 1):  # 2 would be an unreadable file or an empty run
            raise RuntimeError(f"svdguard inspect exited {result.exit_code}: {result.output}")
        count = len(json.loads(result.stdout)["rows"])
    else:
        start = time.perf_counter()
        count = 0
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.ndim != 2 or not tensor.is_floating_point():
                    continue  # biases, norms and ids: svdguard skips them too
                if variant == "torch":
                    torch.linalg.svdvals(tensor.to(torch.float64))
                elif variant == "torch-tall":  # the orientation trick svdguard uses
                    wide = tensor.shape[0] < tensor.shape[1]
                    torch.linalg.svdvals((tensor.mT if wide else tensor).to(torch.float64))
                else:
                    np.linalg.svd(tensor.numpy().astype(np.float64), compute_uv=False)
                count += 1
                del tensor
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"seconds": seconds, "peak_rss": peak, "baseline_rss": baseline, "matrices": count}


def in_subprocess(*args: str, threads: int) -> dict[str, float]:
    # numpy's bundled OpenBLAS takes every core unless told: give every variant the same.
    env = dict(os.environ)
    env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    env["MKL_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--vocab", type=int, default=30522, help="rows of the token embedding")
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs; fastest kept")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads, every variant")
    parser.add_argument("--numpy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--checkpoint", help="time this .safetensors file instead of a generated one"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child process: one measurement, printed as JSON
        print(json.dumps(measure(args.measure, Path(args.path), args.threads)))
        return

    with tempfile.TemporaryDirectory() as directory:
        if args.checkpoint:
            path = Path(args.checkpoint)
            size = path.stat().st_size / 2**20
            print(f"checkpoint: {path} ({size:.0f} MiB); torch threads {args.threads}")
        else:
            path = Path(directory) / "bert-base.safetensors"
            subprocess.run(
                [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
                 f"import bench_inspect as b; from pathlib import Path;"
                 f"b.generate(Path({str(path)!r}), {args.layers}, {args.vocab})"],
                check=True,
            )  # fmt: skip
            matrices = shapes(args.layers, args.vocab)
            largest = max(m * n for m, n in matrices.values())
            print(
                f"checkpoint: {len(matrices)} matrices, {path.stat().st_size / 2**20:.0f} MiB "
                f"float32; largest {largest * 8 / 2**20:.0f} MiB in float64; torch threads "
                f"{args.threads}"
            )
        variants = ["torch", "torch-tall", "svdguard"] + (["numpy"] if args.numpy else [])
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for variant in variants:
                run = in_subprocess(
                    "--measure",
                    variant,
                    "--path",
                    str(path),
                    "--threads",
                    str(args.threads),
                    threads=args.threads,
                )
                if variant not in best or run["seconds"] < best[variant]["seconds"]:
                    best[variant] = run
        base = best["torch"]["seconds"]
        print(f"{'variant':<10} {'seconds':>8} {'ratio':>6} {'peak RSS':>10} {'growth':>10}")
        for variant in variants:
            run = best[variant]
            growth = run["peak_rss"] - run["baseline_rss"]
            print(
                f"{variant:<10} {run['seconds']:8.2f} {run['seconds'] / base:6.3f} "
                f"{run['peak_rss'] / 2**20:6.0f} MiB {growth / 2**20:6.0f} MiB"
            )
        print("growth: peak RSS minus the RSS after imports (the run's own memory)")


if __name__ == "__main__":
    main()
