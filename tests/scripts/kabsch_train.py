"""Fit a point cloud to a target up to rotation (Kabsch-aligned squared distance).

Usage: python kabsch_train.py [STEPS]. Exit status 0 when the aligned distance has
converged, 1 when a gradient is not finite (printed with its step), 2 otherwise.

The start is symmetric: an octahedron and a scaled, rotated copy of it, so the
cross-covariance XᵀY is a multiple of a rotation and all its singular values are
equal. The alignment loss is smooth there, but torch's SVD backward divides by
the (zero) gaps between singular values.
"""

import sys

import torch
from kabsch_align import kabsch_residual


def main(argv: list[str]) -> int:
    steps = int(argv[1]) if len(argv) > 1 else 100
    eye = torch.eye(3)
    points = torch.cat([eye, -eye]).requires_grad_(True)  # regular octahedron
    turn = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # exact rotation
    target = 1.5 * points.detach() @ turn
    optimizer = torch.optim.SGD([points], lr=0.5)
    loss = torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = kabsch_residual(points, target).pow(2).sum(dim=1).mean()
        loss.backward()
        if not torch.isfinite(points.grad).all():
            print(f"step {step}: loss {loss.item():.3e}, gradient not finite")
            return 1
        optimizer.step()
    print(f"step {steps}: loss {loss.item():.3e}")
    return 0 if loss.item() < 1e-6 else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
