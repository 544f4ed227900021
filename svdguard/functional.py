"""Matrix functions built on the SVD or eigh, with gradients exact at repeated singular values.

A generic SVD backward cannot be exact at a tie (docs/backward.md); these functions
can, because each knows its scalar function h and differentiates it by
divided differences (Daleckii–Krein, docs/matrix-functions.md). Every function takes a
batch ``(..., m, n)``, float32/float64 (float16/bfloat16 computed in float32),
real or complex (``procrustes(special=True)`` real only), on any device, and
works under torch.func (grad, vmap; pass ``check=False`` where a function has
a data-dependent check). Second derivatives are not implemented and raise.

========================  ==========================  =========================================
function                  value                       gradient exists when
========================  ==========================  =========================================
polar(A)                  U Vᴴ                        ≤ 1 zero singular value (square), none else
procrustes(A)             U diag(1,…,1,d) Vᵀ          not (s_{n-1} = s_n and det A < 0)
procrustes(A, B)          polar(Aᴴ B): min ‖A R − B‖   as polar(Aᴴ B) (scipy's orthogonal_procrustes)
gram_sqrt(A)              (AᴴA)^{1/2}                 A of full rank
gram_inv_sqrt(A, eps)     (AᴴA + eps I)^{-1/2}        eps > 0: always; eps = 0: full column rank
spd_sqrt(B)               B^{1/2}                     B positive definite
spd_inv_sqrt(B)           B^{-1/2}                    B positive definite
spd_log(B)                log B                       B positive definite
pinv(A, rtol, atol)       A⁺ (rank cut)               no singular value at the cut
low_rank(A, k)            U_k S_k V_kᴴ                s_k > s_{k+1} (else InputError)
projector(A, k)           U_k U_kᴴ                    s_k > s_{k+1} (else InputError)
========================  ==========================  =========================================

``polar`` and ``procrustes`` take ``gauge_check=True``: the backward then warns
when the loss depends on a choice the SVD leaves arbitrary (outside the domain).

Ties *inside* a domain (identity matrices, orthogonal matrices, isotropic
point clouds, repeated eigenvalues) are where these functions differ from
autograd through ``torch.linalg.svd``/``eigh``: the gradient is exact there
instead of NaN/inf.
"""

from svdguard.linalg.gram import gram_inv_sqrt, gram_sqrt
from svdguard.linalg.low_rank import low_rank, projector
from svdguard.linalg.pinv import pinv
from svdguard.linalg.polar import polar, procrustes
from svdguard.linalg.spd import spd_inv_sqrt, spd_log, spd_sqrt

__all__ = [
    "gram_inv_sqrt",
    "gram_sqrt",
    "low_rank",
    "pinv",
    "polar",
    "procrustes",
    "projector",
    "spd_inv_sqrt",
    "spd_log",
    "spd_sqrt",
]
