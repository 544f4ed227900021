"""Time `svdguard inspect` against bare SVD loops on MiniLM and a BERT-base-shaped checkpoint.

    python benchmarks/bench_inspect.py                   # both models, 2 alternated rounds
    python benchmarks/bench_inspect.py --layers 1        # a quick version of the BERT shape

Two checkpoints, each measured in the same run:

* MiniLM: ``/tmp/minilm/model/model.safetensors`` (or ``--minilm PATH``), skipped
  with a message when absent;
* BERT-base shapes: per layer four 768×768, one 3072×768 and one 768×3072
  matrix, ``--layers`` (12) layers, float32, BERT's N(0, 0.02²) initialisation,
  written to a temporary directory (``--vocab N`` adds an N×768 embedding).

Three ways to get the singular values of every matrix, each in its own fresh
process (so that its peak RSS is its own), alternated ``--repeat`` times,
fastest kept:

* ``svdguard``: the CLI in-process (``inspect PATH --format json --device cpu``,
  stdout captured): loading, checks, certified spectra, diagnostics, JSON;
* ``loop``: ``safe_open`` + ``torch.linalg.svdvals`` in float64 per matrix, wide
  matrices transposed (torch's CPU svdvals is several times faster tall);
* ``numpy``: ``safe_open`` + ``numpy.linalg.svd(compute_uv=False)`` in float64.

Printed per checkpoint: seconds, ratio to the bare loop (target for svdguard
≤ 0.5), peak RSS growth, how many matrices each method of svdguard served,
and the largest relative difference of svdguard's κ₂ from the loop's float64 SVD.
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
MINILM = Path("/tmp/minilm/model/model.safetensors")
VARIANTS = ("loop", "svdguard", "numpy")


def shapes(layers: int, vocab: int) -> dict[str, tuple[int, int]]:
    """The matrix shapes of a BERT-base encoder with ``layers`` layers (and an embedding)."""
    found = {"embeddings.word_embeddings.weight": (vocab, HIDDEN)} if vocab else {}
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


def measure(variant: str, path: Path, threads: int) -> dict[str, object]:
    """Run one variant in this (fresh) process; seconds exclude the imports.

    Returns the seconds, peak and baseline RSS, κ₂ per matrix (key → value) and,
    for svdguard, how many matrices each method served.
    """
    import numpy as np
    import torch
    from safetensors import safe_open

    torch.set_num_threads(threads)
    cond: dict[str, float] = {}
    methods: dict[str, int] = {}
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
        result = runner.invoke(app, ["inspect", str(path), "--format", "json", "--device", "cpu"])
        seconds = time.perf_counter() - start
        if result.exit_code not in (0, 1):
            raise RuntimeError(f"svdguard inspect exited {result.exit_code}: {result.output}")
        for row in json.loads(result.stdout)["rows"]:
            if row.get("kind") == "matrix" and row.get("cond") is not None:
                cond[row["key"]] = row["cond"]
                methods[row["method"]] = methods.get(row["method"], 0) + 1
    else:
        start = time.perf_counter()
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.ndim != 2 or min(tensor.shape) < 2:
                    continue  # vectors: nothing to decompose (inspect skips them too)
                if variant == "loop":
                    wide = tensor.shape[0] < tensor.shape[1]
                    s = torch.linalg.svdvals((tensor.mT if wide else tensor).to(torch.float64))
                    cond[key] = float(s[0] / s[-1])
                else:
                    s_np = np.linalg.svd(tensor.numpy().astype(np.float64), compute_uv=False)
                    cond[key] = float(s_np[0] / s_np[-1])
                del tensor
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "seconds": seconds,
        "peak_rss": peak,
        "baseline_rss": baseline,
        "cond": cond,
        "methods": methods,
    }


def in_subprocess(variant: str, path: Path, threads: int) -> dict:
    # numpy's bundled OpenBLAS takes every core unless told: give every variant the same.
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    command = [sys.executable, __file__, "--measure", variant, "--path", str(path)]
    out = subprocess.run(
        [*command, "--threads", str(threads)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(label: str, path: Path, repeat: int, threads: int) -> None:
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for variant in VARIANTS:
            run = in_subprocess(variant, path, threads)
            if variant not in best or run["seconds"] < best[variant]["seconds"]:
                best[variant] = run
    base = best["loop"]["seconds"]
    print(f"\n{label}: {path.stat().st_size / 2**20:.0f} MiB, {len(best['loop']['cond'])} matrices")
    print(f"{'variant':<10} {'seconds':>8} {'ratio':>6} {'growth':>10}")
    for variant in VARIANTS:
        run = best[variant]
        growth = run["peak_rss"] - run["baseline_rss"]
        print(
            f"{variant:<10} {run['seconds']:8.2f} {run['seconds'] / base:6.3f} "
            f"{growth / 2**20:6.0f} MiB"
        )
    ours, loop = best["svdguard"]["cond"], best["loop"]["cond"]
    worst = max((abs(ours[k] / loop[k] - 1), k) for k in loop)
    print(
        f"svdguard methods: {best['svdguard']['methods']}; largest relative κ₂ difference from "
        f"the float64 SVD loop: {worst[0]:.1e} ({worst[1]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--vocab", type=int, default=0, help="rows of a token embedding (0: none)")
    parser.add_argument("--minilm", type=Path, default=MINILM, help="MiniLM's model.safetensors")
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs; fastest kept")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads, every variant")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child process: one measurement, printed as JSON
        print(json.dumps(measure(args.measure, Path(args.path), args.threads)))
        return

    print(f"threads {args.threads} (torch, OpenBLAS, MKL), fastest of {args.repeat} rounds")
    if args.minilm.is_file():
        compare("MiniLM", args.minilm, args.repeat, args.threads)
    else:
        print(f"\nMiniLM: {args.minilm} not found, skipped")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bert-base.safetensors"
        subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
             f"import bench_inspect as b; from pathlib import Path;"
             f"b.generate(Path({str(path)!r}), {args.layers}, {args.vocab})"],
            check=True,
        )  # fmt: skip
        compare(f"BERT-base shapes ({args.layers} layers)", path, args.repeat, args.threads)


if __name__ == "__main__":
    main()
