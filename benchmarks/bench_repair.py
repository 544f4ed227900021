"""Time and peak memory of `svdguard repair` on a BERT-base-shaped checkpoint.

    python benchmarks/bench_repair.py               # 12 layers (~0.34 GB, a few minutes)
    python benchmarks/bench_repair.py --layers 2    # a quick version

The checkpoint (written to a temporary directory) holds BERT-base's encoder matrices:
per layer four 768×768 attention matrices, a 3072×768 and a 768×3072 feed-forward
matrix, float32 N(0, 0.02²), safetensors. ``--ill`` of them (spread over the layers)
are made ill-conditioned: one column is replaced by its neighbour plus 1e-7 of itself,
so σ_min drops to ≈ 1e-7·σ and κ₂ ≈ 1e7 ≫ the bound ``--max-cond`` (1e5). (The default
bounds, inspect's, would repair about half of the random square matrices too: a
Gaussian 768×768 matrix has κ₂ > 2.9e3 with probability ≈ 1/2.)

Each measurement runs in its own fresh process (so its peak RSS is its own), one
torch thread; its baseline is its RSS right after the imports (Linux: VmHWM is reset
there through /proc/self/clear_refs, so the peak is the run's own):

* ``svdvals``: every matrix loaded and ``torch.linalg.svdvals`` in float64 on the
  tall orientation: the plain pass every repair needs to find what violates;
* ``repair``: ``svdguard.app.repairing.repair(..., max_cond=--max-cond)``, writing the
  output (chunked copy, repaired ranges overwritten, fsync, read-back verification).

Printed: seconds, the ratio repair/svdvals, and peak RSS above that baseline beside
the largest tensor's float64 size (the target: a small multiple of it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, INTERMEDIATE = 768, 3072
ROOT = Path(__file__).resolve().parents[1]


def shapes(layers: int) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for i in range(layers):
        prefix = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            found[f"{prefix}attention.self.{name}.weight"] = (HIDDEN, HIDDEN)
        found[f"{prefix}attention.output.dense.weight"] = (HIDDEN, HIDDEN)
        found[f"{prefix}intermediate.dense.weight"] = (INTERMEDIATE, HIDDEN)
        found[f"{prefix}output.dense.weight"] = (HIDDEN, INTERMEDIATE)
    return found


def generate(path: Path, layers: int, ill: int) -> list[str]:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    keys = list(shapes(layers))
    spoiled = keys[:: max(1, len(keys) // max(ill, 1))][:ill]
    tensors = {}
    for key, shape in shapes(layers).items():
        weight = torch.randn(shape, generator=g) * 0.02
        if key in spoiled:
            weight[:, 0] = weight[:, 1] + 1e-7 * weight[:, 0]
        tensors[key] = weight
    save_file(tensors, path, metadata={"format": "pt"})
    return spoiled


MEASURE = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from svdguard.app.repairing import Status, repair
from svdguard.io import iter_records
from svdguard.linalg.diagnostics import as_matrix, tall
what, source, target = sys.argv[1:4]
def status_kib(field):
    with open("/proc/self/status") as handle:
        return next(int(l.split()[1]) for l in handle if l.startswith(field + ":")) * 1024
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # Linux: reset the peak (VmHWM) to the current RSS
base = status_kib("VmRSS")
start = time.perf_counter()
extra = {}
if what == "svdvals":
    for record in iter_records(source):
        matrix = as_matrix(record.load()).double()
        torch.linalg.svdvals(tall(matrix))
        del matrix
elif what == "repair":
    result = repair(source, target, max_cond=float(sys.argv[4]))
    extra = {status.value: result.count(status) for status in Status}
    extra["max_change"] = max((r.rel_change or 0.0) for r in result.records)
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(json.dumps({"seconds": seconds, "peak": peak, "base": base, **extra}))
"""


def measure(what: str, source: Path, target: Path, max_cond: float) -> dict[str, float]:
    env_path = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, what, str(source), str(target), str(max_cond)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ill", type=int, default=4, help="how many matrices to spoil")
    parser.add_argument(
        "--max-cond",
        type=float,
        default=1e5,
        help="the bound (default 1e5: above κ₂ of the unspoiled random matrices, ≈ 2·768 "
        "typical, and far below the spoiled ones')",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "bert.safetensors", Path(tmp) / "repaired.safetensors"
        spoiled = generate(source, args.layers, args.ill)
        size = source.stat().st_size
        plain = measure("svdvals", source, target, args.max_cond)
        repaired = measure("repair", source, target, args.max_cond)
        largest = INTERMEDIATE * HIDDEN * 8
        mib = 2**20
        print(
            f"checkpoint: {len(shapes(args.layers))} matrices, {size / mib:.0f} MiB float32, "
            f"{len(spoiled)} made ill-conditioned; one torch thread"
        )
        print(f"largest tensor in float64: {largest / mib:.1f} MiB")
        print(
            f"{'pass':<10}{'seconds':>10}{'ratio':>8}{'peak RSS − baseline':>24}{'× largest f64':>15}"
        )
        for name, row in (("svdvals", plain), ("repair", repaired)):
            above = row["peak"] - row["base"]
            print(
                f"{name:<10}{row['seconds']:>10.1f}{row['seconds'] / plain['seconds']:>8.2f}"
                f"{above / mib:>20.1f} MiB{above / largest:>15.1f}"
            )
        print(
            f"repair: {repaired.get('repaired', 0):.0f} repaired, "
            f"{repaired.get('untouched', 0):.0f} untouched, "
            f"{repaired.get('unreachable', 0):.0f} unreachable; "
            f"largest ‖ΔW‖_F/‖W‖_F = {repaired['max_change']:.2e}; "
            f"RSS after the imports {repaired['base'] / mib:.0f} MiB"
        )


if __name__ == "__main__":
    main()
