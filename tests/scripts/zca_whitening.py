"""Learn a feature map whose ZCA-whitened output matches a rotated copy of the data.

Usage: python zca_whitening.py [STEPS]. Prints the first and last loss; exit status 0
when every gradient was finite and the loss went down, 1 when a gradient is not finite.

ZCA whitening, X ↦ X C^{-1/2} with C = XᵀX/N = V diag(λ) Vᵀ, computed with
torch.linalg.eigh. The data start exactly isotropic (C = I, all eigenvalues equal),
where torch's eigh backward divides by the zero gaps between eigenvalues.
"""

import sys

import torch


def hadamard_features() -> torch.Tensor:
    """8 samples × 4 features of ±1 with XᵀX = 8 I exactly (columns of a Hadamard matrix)."""
    h = torch.ones(1, 1)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h[:, 1:5]


def zca(x: torch.Tensor, shrink: float = 1e-3) -> torch.Tensor:
    covariance = x.mT @ x / x.shape[0]
    lam, vectors = torch.linalg.eigh(covariance)
    return x @ (vectors * (lam + shrink).rsqrt()) @ vectors.mT


def main(argv: list[str]) -> int:
    steps = int(argv[1]) if len(argv) > 1 else 50
    data = hadamard_features()
    skew = torch.tensor(
        [[0.0, 0.6, 0.0, -0.3], [-0.6, 0.0, 0.4, 0.0], [0.0, -0.4, 0.0, 0.5], [0.3, 0.0, -0.5, 0.0]]
    )
    target = data @ torch.linalg.matrix_exp(skew)  # a rotated, still white, copy
    mixing = torch.eye(4, requires_grad=True)
    optimizer = torch.optim.SGD([mixing], lr=0.2)
    losses = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = (zca(data @ mixing) - target).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
        if not torch.isfinite(mixing.grad).all():
            print(f"step {step}: loss {loss.item():.3e}, gradient not finite")
            return 1
        optimizer.step()
    print(f"first loss {losses[0]:.3e}, last loss {losses[-1]:.3e}")
    return 0 if losses[-1] < losses[0] else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
