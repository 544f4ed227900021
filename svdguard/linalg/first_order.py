"""Make second derivatives through the spectral functions fail loudly instead of silently.

The backward passes of :mod:`svdguard.linalg.spectral_svd`, :mod:`~svdguard.linalg.gram`
and :mod:`~svdguard.linalg.spd` are linear in the incoming gradient G and are
written with differentiable torch ops, but they treat the saved factors
(U, s, V or Q, λ) as constants. Differentiating the gradient again (a Hessian,
a gradient penalty) would therefore miss every term that comes from the
factors moving with A, and return a wrong number without a word. The guard
below sits on each computed gradient and raises when autograd reaches it a
second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on ``grad``; its own backward (a second derivative) raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        # ``anchor`` (the input matrix) is an input only so that the result is
        # connected to it in a create_graph=True backward.
        return grad.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad_grad: torch.Tensor) -> tuple[None, None]:
        raise NotImplementedError(
            "svdguard.functional: second derivatives are not implemented (the backward treats "
            "the SVD/eigh factors as constants, so differentiating it again would be wrong); "
            "use first-order gradients only"
        )


def first_order_only(grad: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``grad`` itself; when autograd records the backward (create_graph=True), a guard node."""
    if not torch.is_grad_enabled():
        return grad
    apply = cast(Callable[..., torch.Tensor], _FirstOrderOnly.apply)  # torch leaves it untyped
    return apply(grad, anchor)
