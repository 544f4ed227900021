"""Regenerate every file of sample_data/ (seeded: the same bytes on every run).

    python sample_data/make_samples.py [OUTPUT_DIR]

checkpoint.safetensors holds one tensor per rule ``svdguard inspect`` knows,
each built as U diag(s) Vᵀ from Haar-random orthogonal U, V and a chosen
spectrum s (float64), then stored in the dtype named below:

======================================  ===========  =========  ==================================
key                                     shape        dtype      expected (health / svd-grad)
======================================  ===========  =========  ==================================
encoder.layer0.attention.weight         32×32        float32    clean (κ = 2)
encoder.layer0.attention.bias           32           float32    skipped: 1-d
encoder.layer0.ffn.weight               48×24        float32    clean (κ = 3)
encoder.layer1.ill_conditioned.weight   32×32        float32    SG201 ill-conditioned, warning
                                                                (κ = 1e4 ≥ κ_0.99(32, 32) ≈ 6.3e3)
encoder.layer1.rank_deficient.weight    40×32        float32    SG202 rank-deficient, warning
                                                                (rank 31)
encoder.layer2.orthogonal.weight        16×16        float32    SG301 tied (all s = 1):
                                                                info / error
encoder.layer2.near_tie.weight          24×24        float32    clean / SG302 near-degenerate,
                                                                warning (gap 1e-4·σ_max)
embeddings.word.weight                  64×32        bfloat16   SG401 noise-floor, info
conv1.weight                            8×3×3×3      float32    clean, analysed as 8×27
head.diverged.weight                    8×8          float32    SG101 nonfinite (one NaN), error
head.unused.weight                      8×8          float32    SG102 zero, warning
head.fp16.weight                        16×16        float16    clean
pooler.dense.weight                     16×16        float64    clean
classifier.weight                       16×16        float64    SG201 ill-conditioned (κ = 1e10);
                                                                SG402 unresolved (info) with
                                                                --precision float32
position_ids                            1×16         int64      skipped: integer
======================================  ===========  =========  ==================================

sharded/ holds the same kind of model split in two shards with a
``model.safetensors.index.json``; identity.npy is eye(4) and tied.npy is
Q₁ diag(3, 2, 2, 1) Q₂ᵀ (float64): matrices whose plain SVD gradient is NaN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SEED = 20240611


def haar_orthogonal(size: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix: Q of a Gaussian's QR with the signs of diag(R) fixed."""
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def with_spectrum(
    s: list[float] | np.ndarray, m: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """U diag(s) Vᵀ, m×n, with exactly the singular values ``s`` (float64)."""
    s = np.asarray(s, dtype=np.float64)
    u = haar_orthogonal(m, rng)[:, : s.size]
    v = haar_orthogonal(n, rng)[:, : s.size]
    return (u * s) @ v.T


def to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def checkpoint(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The tensors of checkpoint.safetensors (see the module docstring)."""
    ill = np.concatenate([np.linspace(1.0, 0.5, 31), [1e-4]])
    near_tie = np.linspace(2.0, 1.0, 24)
    near_tie[5] = near_tie[4] - 1e-4 * near_tie[0]  # relative gap 1e-4: above ε₃₂, below √ε₃₂
    embedding = np.linspace(4.0, 1.0, 32)
    embedding[10] = embedding[9] - 4e-3 * embedding[0]  # below bf16's noise floor 7.8e-3·σ_max
    diverged = with_spectrum(np.linspace(2.0, 1.0, 8), 8, 8, rng)
    diverged[3, 5] = np.nan
    return {
        "encoder.layer0.attention.weight": to_torch(
            with_spectrum(np.linspace(2.0, 1.0, 32), 32, 32, rng), torch.float32
        ),
        "encoder.layer0.attention.bias": to_torch(rng.standard_normal(32) * 0.02, torch.float32),
        "encoder.layer0.ffn.weight": to_torch(
            with_spectrum(np.linspace(3.0, 1.0, 24), 48, 24, rng), torch.float32
        ),
        "encoder.layer1.ill_conditioned.weight": to_torch(
            with_spectrum(ill, 32, 32, rng), torch.float32
        ),
        "encoder.layer1.rank_deficient.weight": to_torch(
            with_spectrum(np.concatenate([np.linspace(2.0, 1.0, 31), [0.0]]), 40, 32, rng),
            torch.float32,
        ),
        "encoder.layer2.orthogonal.weight": to_torch(haar_orthogonal(16, rng), torch.float32),
        "encoder.layer2.near_tie.weight": to_torch(
            with_spectrum(near_tie, 24, 24, rng), torch.float32
        ),
        "embeddings.word.weight": to_torch(with_spectrum(embedding, 64, 32, rng), torch.bfloat16),
        "conv1.weight": to_torch(rng.standard_normal((8, 3, 3, 3)) / np.sqrt(27), torch.float32),
        "head.diverged.weight": to_torch(diverged, torch.float32),
        "head.unused.weight": torch.zeros(8, 8, dtype=torch.float32),
        "head.fp16.weight": to_torch(
            with_spectrum(np.linspace(2.0, 1.0, 16), 16, 16, rng), torch.float16
        ),
        "pooler.dense.weight": to_torch(
            with_spectrum(np.linspace(5.0, 1.0, 16), 16, 16, rng), torch.float64
        ),
        "classifier.weight": to_torch(
            # Its own generator, so the other files keep the bytes they had before it was added.
            with_spectrum(
                np.concatenate([np.linspace(1.0, 0.5, 15), [1e-10]]),
                16,
                16,
                np.random.default_rng(SEED + 1),
            ),
            torch.float64,
        ),
        "position_ids": torch.arange(16, dtype=torch.int64).reshape(1, 16),
    }


def sharded(rng: np.random.Generator, directory: Path) -> None:
    """sharded/: two safetensors shards and the index that maps each key to its shard."""
    shards = {
        "model-00001-of-00002.safetensors": {
            "encoder.layer0.weight": to_torch(
                with_spectrum(np.linspace(2.0, 1.0, 16), 16, 16, rng), torch.float32
            ),
            "encoder.layer0.bias": to_torch(rng.standard_normal(16) * 0.02, torch.float32),
        },
        "model-00002-of-00002.safetensors": {
            "encoder.layer1.weight": torch.eye(16, dtype=torch.float32),
            "lm_head.weight": to_torch(
                with_spectrum(np.linspace(3.0, 1.0, 16), 32, 16, rng), torch.bfloat16
            ),
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    total = 0
    for filename, tensors in shards.items():
        save_file(tensors, str(directory / filename), metadata={"format": "pt"})
        weight_map.update({key: filename for key in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(directory: Path) -> None:
    rng = np.random.default_rng(SEED)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint(rng), str(directory / "checkpoint.safetensors"), metadata={"format": "pt"})
    sharded(rng, directory / "sharded")
    np.save(directory / "identity.npy", np.eye(4))
    np.save(directory / "tied.npy", with_spectrum([3.0, 2.0, 2.0, 1.0], 4, 4, rng))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
