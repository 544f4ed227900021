"""Objectives to differentiate an SVD with: seeded probe losses and saved upstream gradients.

``svdguard grad`` needs a scalar loss L(U, S, Vh) to backpropagate. Either the user
saved the upstream gradients of a real training step (:class:`Upstream`), or a
*probe* stands in for the unknown loss (:class:`Probe`), with random weights W
drawn from a seed so that a run can be reproduced exactly::

    polar        L = ⟨W, U Vᴴ⟩              gauge invariant
    reconstruct  L = ⟨W, U diag(S) Vᴴ⟩      gauge invariant (L depends on A only)
    vectors      L = ⟨W, U⟩ + ⟨W', Vh⟩      NOT gauge invariant: depends on the basis
                                            the SVD picks inside a tied block
    values       L = Σ S                     gauge invariant (the nuclear norm)

⟨X, Y⟩ = Re Σ conj(X) ∘ Y is the real inner product (the plain sum of products
for real tensors), so ∂L/∂Y = X in torch's convention for real and complex Y.

At tied singular values no SVD backward sees the symmetric in-block part of the
gradient (docs/backward.md): it is zero for losses of U Vᴴ and S (polar,
values), so their stabilized gradient is the derivative there; it is not zero
for ⟨W, U diag(S) Vᴴ⟩ (reconstruct). ``exact_at_ties`` records which; for saved
upstream gradients the loss behind them is unknown (None).

Weights are drawn in float64 from ``torch.Generator().manual_seed(seed)`` and then
cast to the dtype of the factors, so float32 and float64 runs use the same W up to
rounding, on every platform. Torch only: the CLI and the tests build the same
probe through :func:`make_probe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from svdguard.errors import InputError

__all__ = [
    "DEFAULT_LOSS",
    "DEFAULT_SEED",
    "LOSSES",
    "UPSTREAM_KEYS",
    "Probe",
    "Upstream",
    "factor_shapes",
    "inner",
    "make_probe",
    "upstream_from_tensors",
]

#: Probe loss names, the default first.
LOSSES = ("polar", "reconstruct", "vectors", "values")
DEFAULT_LOSS = "polar"
DEFAULT_SEED = 0
#: Names of the upstream gradients an upstream file may hold, in factor order.
UPSTREAM_KEYS = ("U", "S", "Vh")

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
OptionalGrads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """⟨x, y⟩ = Re Σ conj(x) ∘ y over all entries (a real scalar)."""
    if x.is_complex() or y.is_complex():
        return (x.conj() * y).real.sum()
    return (x * y).sum()


def factor_shapes(shape: tuple[int, ...] | torch.Size) -> tuple[tuple[int, ...], ...]:
    """Thin factor shapes of a ``(..., m, n)`` matrix: U (..., m, k), S (..., k), Vh (..., k, n)."""
    *batch, m, n = shape
    k = min(m, n)
    return (*batch, m, k), (*batch, k), (*batch, k, n)


@dataclass(frozen=True)
class Probe:
    """A seeded probe loss L(U, S, Vh); ``weights`` are W (and W' for ``vectors``)."""

    name: str
    seed: int
    weights: tuple[torch.Tensor, ...]

    def __call__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
        """The scalar loss at the factors (differentiable)."""
        if self.name == "polar":
            (w,) = self.weights
            return inner(w, u @ vh)  # ⟨W, U Vᴴ⟩
        if self.name == "reconstruct":
            (w,) = self.weights
            return inner(w, (u * s.unsqueeze(-2).to(u.dtype)) @ vh)  # ⟨W, U diag(S) Vᴴ⟩
        if self.name == "vectors":
            w_u, w_vh = self.weights
            return inner(w_u, u) + inner(w_vh, vh)  # ⟨W, U⟩ + ⟨W', Vh⟩
        return s.sum()  # values: Σ S

    @property
    def exact_at_ties(self) -> bool:
        """The in-block part at a tie is zero: polar (J + K ≡ 0) and values (no gU, gV)."""
        return self.name in ("polar", "values")

    def describe(self) -> str:
        """One line for reports: ``probe polar (seed 0)``."""
        return f"probe {self.name} (seed {self.seed})"


#: Seeds torch.Generator.manual_seed accepts: a signed or unsigned 64-bit integer.
SEED_RANGE = (-(2**63), 2**64)


def make_probe(
    name: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    seed: int = DEFAULT_SEED,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Probe:
    """The probe loss ``name`` for a ``(..., m, n)`` matrix, weights drawn from ``seed``.

    ``dtype`` is the dtype of the factors the loss will see (the compute dtype of
    the SVD, e.g. float32 for a bfloat16 matrix). polar/reconstruct draw W shaped
    like the matrix; vectors draws W shaped like U, then W' shaped like Vh, from
    the same generator; values has no weights.

    >>> p = make_probe("polar", (3, 2), seed=1)
    >>> p.weights[0].shape, p.weights[0].dtype
    (torch.Size([3, 2]), torch.float64)
    """
    if name not in LOSSES:
        raise InputError(f"unknown probe loss {name!r}; choose one of {', '.join(LOSSES)}")
    if len(shape) < 2:
        raise InputError(f"a probe needs a (..., m, n) matrix shape, got {tuple(shape)}")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise InputError(
            f"seed must be an integer in [-2**63, 2**64) (torch's generator seeds), got {seed}"
        )
    generator = torch.Generator().manual_seed(seed)
    shape_u, _, shape_vh = factor_shapes(shape)
    if name in ("polar", "reconstruct"):
        weight_shapes: tuple[tuple[int, ...], ...] = (tuple(shape),)
    elif name == "vectors":
        weight_shapes = (shape_u, shape_vh)
    else:
        weight_shapes = ()
    weights = tuple(
        torch.randn(ws, dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)
        for ws in weight_shapes
    )
    return Probe(name=name, seed=seed, weights=weights)


@dataclass(frozen=True)
class Upstream:
    """Saved upstream gradients gU, gS, gVh (any may be None = zero)."""

    grad_u: torch.Tensor | None
    grad_s: torch.Tensor | None
    grad_vh: torch.Tensor | None
    source: str = "upstream"

    @property
    def grads(self) -> OptionalGrads:
        return self.grad_u, self.grad_s, self.grad_vh

    def __call__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
        """L = ⟨gU, U⟩ + ⟨gS, S⟩ + ⟨gVh, Vh⟩, whose gradient w.r.t. each factor is its g."""
        total = torch.zeros((), dtype=s.dtype, device=s.device)
        for grad, factor in zip(self.grads, (u, s, vh), strict=True):
            if grad is not None:
                total = total + inner(grad.to(factor.dtype), factor)
        return total

    #: The loss behind saved gradients is unknown: its in-block part at a tie may not vanish.
    exact_at_ties: ClassVar[bool | None] = None

    def names(self) -> tuple[str, ...]:
        """The factors that have an upstream gradient, e.g. ``("U", "Vh")``."""
        return tuple(key for key, g in zip(UPSTREAM_KEYS, self.grads, strict=True) if g is not None)

    def describe(self) -> str:
        """One line for reports: ``upstream U, Vh from grads.npz``."""
        return f"upstream {', '.join(self.names())} from {self.source}"


def upstream_from_tensors(
    tensors: Mapping[str, torch.Tensor],
    shape: tuple[int, ...] | torch.Size,
    *,
    path: str | Path | None = None,
) -> Upstream:
    """Validate saved upstream gradients against the factors of a ``(..., m, n)`` matrix.

    ``tensors`` maps ``"U"``, ``"S"``, ``"Vh"`` (any non-empty subset) to gradients
    shaped like the thin factors. An unknown key, a missing set, a non-floating
    dtype or a wrong shape raises :class:`~svdguard.errors.InputError` naming the
    file, the key and the expected shape.
    """
    unknown = sorted(set(tensors) - set(UPSTREAM_KEYS))
    if unknown:
        raise InputError(
            f"unexpected entries {unknown}; an upstream file holds gradients named "
            f"{', '.join(UPSTREAM_KEYS)} (any subset)",
            path=path,
        )
    if not tensors:
        raise InputError(
            f"no upstream gradients; expected entries named {', '.join(UPSTREAM_KEYS)}", path=path
        )
    grads: list[torch.Tensor | None] = []
    for key, expected in zip(UPSTREAM_KEYS, factor_shapes(shape), strict=True):
        grad = tensors.get(key)
        if grad is not None:
            if not (grad.dtype.is_floating_point or grad.dtype.is_complex):
                raise InputError(
                    f"dtype {grad.dtype} is not a floating dtype; save the gradient as float32 "
                    "or float64",
                    path=path,
                    key=key,
                )
            if tuple(grad.shape) != expected:
                raise InputError(
                    f"shape {tuple(grad.shape)} does not match the thin factor {key} of a "
                    f"{tuple(shape)} matrix: expected {expected}",
                    path=path,
                    key=key,
                )
        grads.append(grad)
    source = "upstream" if path is None else Path(path).name
    return Upstream(grads[0], grads[1], grads[2], source=source)
