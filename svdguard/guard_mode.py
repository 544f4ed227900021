r"""``svdguard.guard``: route torch's SVD and eigh calls to svdguard inside a ``with`` block.

    with svdguard.guard():            # or @svdguard.guard() on a function
        loss = third_party_model(x)    # its torch.linalg.svd / eigh get a finite backward
        loss.backward()

The guard is a :class:`torch.overrides.TorchFunctionMode`, PyTorch's own mechanism
for intercepting calls at the Python boundary. It therefore reaches every call
that passes through torch's Python bindings, whatever name the caller holds:
``from torch.linalg import svd`` done at import time, ``torch.svd``,
``Tensor.svd`` and Python-level torch code such as ``torch.svd_lowrank``,
``torch.pca_lowrank`` and ``torch.lobpcg`` (on plain tensors). Routed:

=========================  ===================================================
torch.linalg.svd           :func:`svdguard.svd` (``full_matrices`` as given)
torch.svd, Tensor.svd      the same, returning V (not Vh); ``compute_uv=False``
                           goes to torch (its gradient is finite anyway)
torch.linalg.svdvals       :func:`svdguard.svdvals`
torch.linalg.eigh          :func:`svdguard.eigh`
torch.linalg.eigvalsh      :func:`svdguard.eigvalsh`
=========================  ===================================================

The forward results are torch's, bit for bit (the same LAPACK call and driver);
only the backward changes. A call that needs no gradient (``torch.no_grad()``,
inputs without ``requires_grad``), a call with ``out=``, or an input dtype the
drivers do not take (torch's own error is kept) goes to torch unchanged. Every
other torch call goes straight through; the cost is the mode's dispatch, a
Python call per torch call inside the block (docs/guard.md has the figures).

What cannot be reached: C++ composites that call the SVD or eigh inside ATen
without returning to Python: ``torch.linalg.matrix_norm(ord=2)``/``norm(ord=2)``
and ``'nuc'``, ``torch.linalg.cond``, ``torch.linalg.pinv``,
``torch.linalg.lstsq``, ``torch.linalg.matrix_rank``, ``torch.linalg.eig``
(non-Hermitian), and anything compiled by ``torch.compile`` or TorchScript.
``torch.svd_lowrank`` & co. are reached only on plain tensors (a subclass such
as ``nn.Parameter`` dispatches them as a whole, so their inner SVD stays torch's;
pass ``p.data`` or a plain tensor view). Forward-mode AD (``torch.func.jvp``,
``jacfwd``) records no backward, so those calls go to torch (torch's forward derivative).

Scope: the mode is pushed on the *current thread's* mode stack (PyTorch keeps
that stack thread-local), so code that runs in other threads (a DataLoader
worker, a thread pool) is not guarded unless it enters a guard itself. The
backward of a graph built inside the block is svdguard's wherever
``backward()`` is called. Guards nest (the innermost one decides) and leaving
the block — also through an exception — restores torch's behaviour.

``report=True`` records, per call site (the first frame outside torch and
svdguard), how many calls were made, how many backward passes met a tie or a
zero at rounding level with a gradient on the vectors, and how many of those
would have divided by an exact zero in torch's kernel (inf/NaN);
:meth:`guard.report` returns them as a :class:`GuardReport`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from svdguard.errors import InputError
from svdguard.linalg.eigh import EIGH_METHODS, eigh, eigh_tie_tolerance, eigvalsh
from svdguard.linalg.svd import svd, svdvals
from svdguard.tolerances import tie_tolerance

#: dtypes the SVD/eigh drivers take; other dtypes go to torch so that its own error stays.
_ROUTED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)

_SKIPPED_DIRECTORIES = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)


# --- the report ---------------------------------------------------------------------


@dataclass(frozen=True)
class CallSite:
    """One line of user code that called an SVD or eigh inside a guard."""

    file: str  #: path of the first frame outside torch and svdguard
    line: int
    function: str  #: the torch function called: "torch.linalg.svd", "torch.linalg.eigh", ...
    #: calls made from here (with or without gradient)
    calls: int
    #: backward passes through those calls (outside torch.func transforms)
    backward_passes: int
    #: ... that met a tie or a zero at rounding level with a gradient on the vectors
    tie_backwards: int
    #: ... of those, where torch's kernel would have divided by an exact zero (inf/NaN)
    torch_nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GuardReport:
    """What a ``guard(report=True)`` saw; plain data, rendered elsewhere."""

    method: str  #: the SVD method, as the guard was given it (``repr`` for non-strings)
    sites: tuple[CallSite, ...]  #: most calls first

    @property
    def calls(self) -> int:
        return sum(site.calls for site in self.sites)

    @property
    def tie_backwards(self) -> int:
        return sum(site.tie_backwards for site in self.sites)

    @property
    def torch_nonfinite(self) -> int:
        return sum(site.torch_nonfinite for site in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "calls": self.calls,
            "tie_backwards": self.tie_backwards,
            "torch_nonfinite": self.torch_nonfinite,
            "sites": [site.to_dict() for site in self.sites],
        }


class _Counts:
    """Mutable counters of one call site (updated under the guard's lock)."""

    __slots__ = ("backward_passes", "calls", "tie_backwards", "torch_nonfinite")

    def __init__(self) -> None:
        self.calls = 0
        self.backward_passes = 0
        self.tie_backwards = 0
        self.torch_nonfinite = 0


def _caller_frame() -> FrameType | None:
    """The first frame outside torch and svdguard (the user's line that asked for the SVD)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_DIRECTORIES):
        frame = frame.f_back
    return frame


def _visible(t: torch.Tensor) -> bool:
    """Values can be read: not a torch.func wrapped tensor (vmap/grad transforms)."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _svd_backward_flags(
    S: torch.Tensor, m: int, n: int, has_vector_grads: bool
) -> tuple[bool, bool]:
    """(met a tie/zero at rounding level, torch's kernel divides by an exact zero).

    torch's SVD backward divides by E_ij = s_j² − s_i² (i ≠ j), and by s_i in the
    rectangular (m ≠ n) and complex phase terms. S is sorted, so neighbouring
    gaps and s_min decide both questions in O(k).
    """
    if not has_vector_grads or S.shape[-1] == 0:
        return False, False
    S = S.detach()
    tau = tie_tolerance(S[..., :1], S.dtype, m, n)
    gaps = S[..., :-1] - S[..., 1:]
    s_min = S[..., -1:]
    near = bool((gaps <= tau).any()) or bool((s_min <= tau).any())
    squares = S * S
    exact = bool((squares[..., :-1] == squares[..., 1:]).any())
    if m != n or S.is_complex():
        exact = exact or bool((s_min == 0).any())
    return near, exact


def _eigh_backward_flags(lam: torch.Tensor, has_vector_grads: bool) -> tuple[bool, bool]:
    """(met a tie at rounding level, torch's kernel divides by an exact zero λ_j − λ_i)."""
    if not has_vector_grads or lam.shape[-1] < 2:
        return False, False
    lam = lam.detach()
    tau = eigh_tie_tolerance(lam.abs().amax(dim=-1, keepdim=True), lam.dtype, lam.shape[-1])
    gaps = lam[..., 1:] - lam[..., :-1]
    return bool((gaps <= tau).any()), bool((gaps == 0).any())


# --- argument handling ----------------------------------------------------------------


def _argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, default: Any
) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _needs_backward(A: Any, *, square: bool = False) -> bool:
    """Whether autograd will record this call on an input svdguard takes.

    Anything else — no gradient, an unsupported dtype, fewer than two dimensions,
    a non-square input to eigh — goes to torch, so its result or its own error is kept.
    """
    return (
        isinstance(A, torch.Tensor)
        and A.requires_grad
        and torch.is_grad_enabled()
        and A.dtype in _ROUTED_DTYPES
        and A.dim() >= 2
        and (not square or A.shape[-1] == A.shape[-2])
    )


class _RouteState(threading.local):
    """Per thread: whether a route is running (its own torch calls then pass every guard)."""

    busy = False


_STATE = _RouteState()

#: Whether :func:`svdguard.svd` takes ``driver=`` (then a routed call keeps its driver).
_SVD_TAKES_DRIVER = "driver" in inspect.signature(svd).parameters


_Route = Callable[["guard", Any, tuple[Any, ...], dict[str, Any]], Any]


# --- the mode -------------------------------------------------------------------------


class guard(TorchFunctionMode, contextlib.ContextDecorator):  # noqa: N801 - used like no_grad
    """Route torch's SVD/eigh calls to svdguard inside a ``with`` block or decorated function.

    ``method``, ``eps``, ``degree``, ``max_cond``, ``gauge_check``: passed to
    :func:`svdguard.svd` for every routed SVD (``None`` = svd's default).
    ``eigh_method`` / ``eigh_eps``: the method of :func:`svdguard.eigh`; by default
    ``method`` where eigh has it (``auto``, ``clamp``, ``lorentz``, ``native``),
    else ``auto``. ``report=True``: count calls and backward passes per call site
    (:meth:`report`). The options are validated on construction.
    """

    def __init__(
        self,
        method: Any = "auto",
        *,
        eps: float | None = None,
        degree: int | None = None,
        max_cond: float | None = None,
        gauge_check: bool = False,
        eigh_method: str | None = None,
        eigh_eps: float | None = None,
        report: bool = False,
    ) -> None:
        super().__init__()
        options: dict[str, Any] = {"method": method}
        for name, value in (("eps", eps), ("degree", degree), ("max_cond", max_cond)):
            if value is not None:
                options[name] = value
        if gauge_check:
            options["gauge_check"] = True
        self._svd_options = options
        if eigh_method is None:
            eigh_method = method if isinstance(method, str) and method in EIGH_METHODS else "auto"
            if eigh_eps is None and eigh_method == method:
                eigh_eps = eps
        self._eigh_options: dict[str, Any] = {"method": eigh_method, "gauge_check": gauge_check}
        if eigh_eps is not None:
            self._eigh_options["eps"] = eigh_eps
        self._method = method
        self._reporting = bool(report)
        self._lock = threading.Lock()
        self._sites: dict[tuple[str, int, str], _Counts] = {}
        self._validate()

    def _validate(self) -> None:
        """Reject bad options now (svdguard raises InputError naming the parameter)."""
        probe = torch.zeros(1, 1)
        busy, _STATE.busy = _STATE.busy, True  # an enclosing guard must not count these calls
        try:
            svd(probe, full_matrices=False, **self._svd_options)
            eigh(probe, **self._eigh_options)
        finally:
            _STATE.busy = busy

    # The mode's entry point: one dict look-up for every torch call inside the block.
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        route = _ROUTES.get(func)
        if route is None or _STATE.busy:
            return func(*args, **(kwargs or {}))
        _STATE.busy = True
        try:
            return route(self, func, args, kwargs or {})
        finally:
            _STATE.busy = False

    # --- reporting --------------------------------------------------------------------

    def _site(self, function: str) -> _Counts | None:
        if not self._reporting:
            return None
        frame = _caller_frame()
        key = (
            ("<unknown>", 0, function)
            if frame is None
            else (frame.f_code.co_filename, frame.f_lineno, function)
        )
        with self._lock:
            counts = self._sites.get(key)
            if counts is None:
                counts = self._sites[key] = _Counts()
            counts.calls += 1
        return counts

    def _count_backward(
        self,
        counts: _Counts | None,
        outputs: tuple[torch.Tensor, ...],
        flags: Callable[[tuple[torch.Tensor | None, ...]], tuple[bool, bool]],
    ) -> None:
        """Hook the outputs so that the backward through them is classified by ``flags``."""
        if counts is None or not all(_visible(t) for t in outputs):
            return
        tracked = tuple(t for t in outputs if t.requires_grad)
        if len(tracked) != len(outputs):
            return

        def on_grads(grads: Any) -> None:
            near, exact = flags(tuple(grads))
            with self._lock:
                counts.backward_passes += 1
                counts.tie_backwards += int(near)
                counts.torch_nonfinite += int(near and exact)

        torch.autograd.graph.register_multi_grad_hook(tracked, on_grads, mode="all")

    def report(self) -> GuardReport:
        """The call sites seen so far (``report=True`` needed), most calls first."""
        if not self._reporting:
            raise InputError("guard.report() needs guard(report=True)")
        with self._lock:
            items = [(key, counts) for key, counts in self._sites.items()]
            sites = tuple(
                CallSite(
                    file=file,
                    line=line,
                    function=function,
                    calls=c.calls,
                    backward_passes=c.backward_passes,
                    tie_backwards=c.tie_backwards,
                    torch_nonfinite=c.torch_nonfinite,
                )
                for (file, line, function), c in items
            )
        method = self._method if isinstance(self._method, str) else repr(self._method)
        return GuardReport(method=method, sites=tuple(sorted(sites, key=lambda s: -s.calls)))


# --- the routes: one function per torch entry point ------------------------------------


def _route_linalg_svd(mode: guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # torch.linalg.svd(A, full_matrices=True, *, driver=None, out=None)
    A = _argument(args, kwargs, 0, "A", None)
    counts = mode._site("torch.linalg.svd")
    driver = kwargs.get("driver")
    if kwargs.get("out") is not None or not _needs_backward(A):
        return func(*args, **kwargs)
    if driver is not None and not _SVD_TAKES_DRIVER:
        return func(*args, **kwargs)
    full_matrices = bool(_argument(args, kwargs, 1, "full_matrices", True))
    options = mode._svd_options if driver is None else {**mode._svd_options, "driver": driver}
    result = svd(A, full_matrices=full_matrices, **options)
    _hook_svd(mode, counts, result[0], result[1], result[2], A.shape[-2], A.shape[-1])
    return result


def _hook_svd(
    mode: guard,
    counts: _Counts | None,
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    m: int,
    n: int,
) -> None:
    values = S.detach()  # not S itself: the hook lives on S's graph, S would never be freed

    def flags(grads: tuple[torch.Tensor | None, ...]) -> tuple[bool, bool]:
        return _svd_backward_flags(values, m, n, grads[0] is not None or grads[2] is not None)

    mode._count_backward(counts, (U, S, Vh), flags)


def _route_legacy_svd(mode: guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # torch.svd(input, some=True, compute_uv=True, *, out=None); Tensor.svd(self, some, compute_uv)
    A = _argument(args, kwargs, 0, "input", None)
    counts = mode._site("torch.svd")
    compute_uv = bool(_argument(args, kwargs, 2, "compute_uv", True))
    if kwargs.get("out") is not None or not compute_uv or not _needs_backward(A):
        return func(*args, **kwargs)
    some = bool(_argument(args, kwargs, 1, "some", True))
    U, S, Vh = svd(A, full_matrices=not some, **mode._svd_options)
    _hook_svd(mode, counts, U, S, Vh, A.shape[-2], A.shape[-1])
    return getattr(torch.return_types, "svd")((U, S, Vh.mH))  # noqa: B009 (absent from stubs)


def _route_svdvals(mode: guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # torch.linalg.svdvals(A, *, driver=None, out=None)
    A = _argument(args, kwargs, 0, "A", None)
    mode._site("torch.linalg.svdvals")
    if kwargs.get("out") is not None or kwargs.get("driver") is not None:
        return func(*args, **kwargs)
    if not _needs_backward(A):
        return func(*args, **kwargs)
    return svdvals(A)


def _route_eigh(mode: guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # torch.linalg.eigh(A, UPLO='L', *, out=None)
    A = _argument(args, kwargs, 0, "A", None)
    counts = mode._site("torch.linalg.eigh")
    if kwargs.get("out") is not None or not _needs_backward(A, square=True):
        return func(*args, **kwargs)
    UPLO = _argument(args, kwargs, 1, "UPLO", "L")
    if UPLO not in ("L", "U"):
        return func(*args, **kwargs)
    lam, V = eigh(A, UPLO, **mode._eigh_options)

    values = lam.detach()  # not lam itself: the hook lives on its graph (a reference cycle)

    def flags(grads: tuple[torch.Tensor | None, ...]) -> tuple[bool, bool]:
        return _eigh_backward_flags(values, grads[1] is not None)

    mode._count_backward(counts, (lam, V), flags)
    return torch.return_types.linalg_eigh((lam, V))  # type: ignore[attr-defined]


def _route_eigvalsh(mode: guard, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # torch.linalg.eigvalsh(A, UPLO='L', *, out=None)
    A = _argument(args, kwargs, 0, "A", None)
    mode._site("torch.linalg.eigvalsh")
    if kwargs.get("out") is not None or not _needs_backward(A, square=True):
        return func(*args, **kwargs)
    UPLO = _argument(args, kwargs, 1, "UPLO", "L")
    if UPLO not in ("L", "U"):
        return func(*args, **kwargs)
    return eigvalsh(A, UPLO)


_ROUTES: dict[Any, _Route] = {
    torch.linalg.svd: _route_linalg_svd,
    torch.svd: _route_legacy_svd,
    torch.Tensor.svd: _route_legacy_svd,
    torch.linalg.svdvals: _route_svdvals,
    torch.linalg.eigh: _route_eigh,
    torch.linalg.eigvalsh: _route_eigvalsh,
}
