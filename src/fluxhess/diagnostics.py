"""Curvature diagnostics of one model and data set, and memory estimates before computing.

:func:`curvature_diagnostics` computes the Hessian H, the GGN G and the
empirical Fisher F of the same loss and reports, side by side:

- the eigenvalue spectra of H, G and F (``eigenvalues``, ascending);
- the negative eigenvalue mass of H, ``Σ_{λ<0} |λ| / Σ |λ|`` (0 for a convex
  point, near 1/2 at a saddle dominated by negative curvature);
- the relative gaps ``‖F − G‖_F / ‖G‖_F`` and ``‖G − H‖_F / ‖H‖_F``: how far the
  empirical Fisher is from the GGN, and the GGN from the Hessian.

:func:`estimate` says, before anything is computed, how large each quantity's
result is for a model and batch, and whether the memory guard of
:mod:`fluxhess._memory` would let it run here.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

from . import api, _memory as memory
from .compare import html_table, text_table
from .errors import InputError, MemoryBudgetError
from ._validate import float_dtype, stacked_inputs
from ._origin import describe
from ._types import Inputs, Model
from .model import Chain
from numpy.typing import ArrayLike

#: The three P×P curvatures, by the names the diagnostics use.
MATRICES = ("hessian", "ggn", "empirical_fisher")


@dataclass
class CurvatureDiagnostics:
    """H, GGN and EF of one model and data set, their spectra and how far apart they are."""

    matrices: dict[str, np.ndarray]  # name → (P, P)
    eigenvalues: dict[str, np.ndarray]  # name → (P,), ascending
    layout: object  # the model's ParamLayout (None for models without one)

    @property
    def negative_mass(self) -> float:
        """``Σ_{λ<0} |λ| / Σ |λ|`` over the Hessian's eigenvalues (0 when H is 0)."""
        lam = self.eigenvalues["hessian"]
        total = np.sum(np.abs(lam))
        return float(np.sum(-lam[lam < 0]) / total) if total > 0 else 0.0

    @property
    def gap_ef_ggn(self) -> float:
        """``‖EF − GGN‖_F / ‖GGN‖_F``."""
        return _gap(self.matrices["empirical_fisher"], self.matrices["ggn"])

    @property
    def gap_ggn_hessian(self) -> float:
        """``‖GGN − H‖_F / ‖H‖_F``."""
        return _gap(self.matrices["ggn"], self.matrices["hessian"])

    def _summary(self):
        head = ["matrix", "trace", "‖·‖_F", "eig min", "eig max", "negative eigs"]
        rows = []
        for name in MATRICES:
            M, lam = self.matrices[name], self.eigenvalues[name]
            rows.append([name, f"{np.trace(M):.4e}", f"{np.linalg.norm(M):.4e}", f"{lam[0]:.4e}", f"{lam[-1]:.4e}",
                         f"{int(np.sum(lam < -_zero(lam)))} of {lam.size}"])
        return head, rows

    def _spectra(self, top: int = 8):
        """The ``top`` largest and the smallest eigenvalue of each matrix, side by side."""
        P = self.eigenvalues["hessian"].size
        ranks = list(range(min(top, P))) + ([P - 1] if P > top else [])
        head = ["rank"] + list(MATRICES)
        rows = [[f"λ_{r + 1}"] + [f"{self.eigenvalues[n][::-1][r]:.4e}" for n in MATRICES] for r in ranks]
        return head, rows

    def _gaps(self) -> list[str]:
        return [
            f"negative eigenvalue mass of the Hessian Σ_(λ<0)|λ| / Σ|λ| = {self.negative_mass:.4g}",
            f"‖EF − GGN‖_F / ‖GGN‖_F = {self.gap_ef_ggn:.4g}",
            f"‖GGN − H‖_F / ‖H‖_F = {self.gap_ggn_hessian:.4g}",
        ]

    def __str__(self) -> str:
        return "\n".join([text_table(*self._summary()), "", "eigenvalues, largest first:", text_table(*self._spectra()), ""]
                         + self._gaps())

    __repr__ = __str__  # not a dump of three P×P matrices

    def _repr_html_(self) -> str:
        gaps = "".join(f"<li>{html.escape(g)}</li>" for g in self._gaps())
        return (html_table(*self._summary()) + "<p>eigenvalues, largest first:</p>" + html_table(*self._spectra())
                + f"<ul>{gaps}</ul>")


def curvature_diagnostics(
    model: Model, params: ArrayLike, X: Inputs, y: ArrayLike, *, loss: str = "mse", agg: str = "sum",
    backend: str = "auto", dtype: str = "float64",
) -> CurvatureDiagnostics:
    """The Hessian, GGN and empirical Fisher of the same loss, their spectra and gaps.

    Args:
        model: a `fluxhess.Chain` or a `fluxhess.FluxModel` (julia backend).
        params: θ `(P,)` in Flux `destructure` order.
        X: inputs `(N, d)`.
        y: targets as for `fluxhess.hessian`.
        loss: `"mse"`, `"crossentropy"`, `"logitcrossentropy"`, `"binarycrossentropy"` or
            `"logitbinarycrossentropy"`.
        agg: `"sum"` or `"mean"`: every matrix carries the loss's factor `s`.
        backend: `"auto"`, `"jax"` or `"julia"`.
        dtype: `"float64"` or `"float32"`.

    Returns:
        A `CurvatureDiagnostics` holding the three `(P, P)` matrices (`matrices`), their
        `(P,)` eigenvalues (`eigenvalues`), the negative eigenvalue mass of the Hessian
        and the relative gaps EF↔GGN and GGN↔H; printing it shows the spectra side by side.

    Raises:
        InputError, MemoryBudgetError, BackendError: as `fluxhess.hessian`.

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 1)); X = np.eye(2); y = np.ones(2)
        >>> d = fh.curvature_diagnostics(m, m.init(0), X, y, backend="jax")
        >>> d.negative_mass, d.gap_ggn_hessian   # linear model + mse: H == GGN
        (0.0, 0.0)
    """
    matrices = {
        name: fn(model, params, X, y, loss=loss, agg=agg, backend=backend, dtype=dtype)
        for name, fn in (("hessian", api.hessian), ("ggn", api.ggn), ("empirical_fisher", api.empirical_fisher))
    }
    eigenvalues = {name: np.linalg.eigvalsh(M) for name, M in matrices.items()}
    return CurvatureDiagnostics(matrices, eigenvalues, getattr(model, "layout", None))


def _gap(A: np.ndarray, B: np.ndarray) -> float:
    norm = np.linalg.norm(B)
    return float(np.linalg.norm(A - B) / norm) if norm > 0 else float(np.linalg.norm(A - B))


def _zero(lam: np.ndarray) -> float:
    """Eigenvalues within this of 0 count as zero (round-off of an eigensolver)."""
    return 1e-12 * max(1.0, float(np.max(np.abs(lam), initial=0.0)))


# ---------------------------------------------------------------------------
# Memory estimates
# ---------------------------------------------------------------------------


@dataclass
class QuantityEstimate:
    quantity: str
    shape: tuple  # of the result; for kron, the (A, G) shapes of every layer
    result_bytes: int
    needs_bytes: int  # what the memory guard checks before computing
    fits: bool


@dataclass
class MemoryEstimate:
    """Per-quantity result sizes for a model and batch; prints as a table."""

    setup: str
    rows: list[QuantityEstimate]
    available_bytes: int

    def __getitem__(self, quantity: str) -> QuantityEstimate:
        for r in self.rows:
            if r.quantity == quantity:
                return r
        raise InputError(f"no estimate for {quantity!r}; the quantities are {', '.join(r.quantity for r in self.rows)}")

    def _table(self):
        head = ["quantity", "result shape", "result", "needs", "fits here"]
        rows = [[r.quantity, str(r.shape), memory.format_bytes(r.result_bytes), memory.format_bytes(r.needs_bytes),
                 "yes" if r.fits else "NO"] for r in self.rows]
        return head, rows

    def _note(self) -> str:
        return f"available now: {memory.format_bytes(self.available_bytes)}; 'fits here' is the memory guard's verdict"

    def __str__(self) -> str:
        return "\n".join([self.setup, text_table(*self._table()), self._note()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return f"<p><b>{html.escape(self.setup)}</b></p>" + html_table(*self._table()) + f"<p>{html.escape(self._note())}</p>"


def estimate(model: Chain, X: ArrayLike | int, *, dtype: str = "float64", backend: str = "auto") -> MemoryEstimate:
    """How much memory each quantity's result takes for `model` and a batch, before computing it.

    `needs_bytes` is what the memory guard checks before the computation: for the P×P
    matrices the peak of the route the backend takes (the JAX backend's own estimate, result
    included; two copies on the julia backend), twice the result for the KFAC factors, the
    result and one chunk for the others.

    Args:
        model: a `fluxhess.Chain` (for a FluxModel: `model.to_spec()[0]`).
        X: the inputs `(N, d)`, or the number of samples N.
        dtype: `"float64"` or `"float32"`.
        backend: the backend whose routes are estimated: `"auto"` (the one the public
            functions pick for `model` by default), `"jax"` or `"julia"`.

    Returns:
        A `MemoryEstimate`, one row per quantity (`shape`, `result_bytes`, `needs_bytes`,
        `fits`); indexed by quantity: `estimate(...)["hessian"].fits` says whether
        `fluxhess.hessian` would be allowed to run here now.

    Raises:
        InputError: `model` is not a Chain; `X` is neither an array nor a positive number
            of samples.
        UnknownNameError: `backend` is not `"auto"`, `"jax"` or `"julia"`.

    Example:
        >>> import fluxhess as fh
        >>> e = fh.estimate(fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1)), 100)
        >>> e["hessian"].shape, e["hessian"].result_bytes
        ((21, 21), 3528)
    """
    itemsize = float_dtype(dtype).itemsize
    P, d, C = _model_sizes(model)
    N = _num_samples(X, model)
    kron_factors = tuple(((l.in_features + int(l.bias),) * 2, (l.out_features,) * 2) for _, l in model.dense_layers)
    shapes: dict[str, tuple] = {
        "forward": (N, C),
        "gradient": (P,),
        "hessian": (P, P),
        "ggn": (P, P),
        "empirical_fisher": (P, P),
        "hvp": (P,),
        "diagonal": (P,),
        "kron": kron_factors,
        "param_jacobian": (N, C, P),
        "input_jacobian": (N, C, d),
        "input_hessian": (N, C, d, d),
        "laplacian": (N, C),
        "divergence": (N,),
    }
    rows = []
    for quantity, shape in shapes.items():
        nbytes = _elements(shape) * itemsize
        needs = _square_bytes(model, P, itemsize, backend) if quantity in _SQUARE else memory.needed_bytes(quantity, _elements(shape), itemsize)
        try:
            memory.require(quantity, needs, shape)
            fits = True
        except MemoryBudgetError:
            fits = False
        rows.append(QuantityEstimate(quantity, shape, nbytes, needs, fits))
    setup = f"memory estimate: {describe(model)}; P = {P}, N = {N}, d = {d}, C = {C}, {float_dtype(dtype).name}"
    return MemoryEstimate(setup, rows, memory.available_bytes())


def _elements(shape) -> int:
    """Entries of an array ``shape``, or of every array in a nested tuple of shapes (kron)."""
    if all(isinstance(s, int) for s in shape):
        return math.prod(shape)
    return sum(_elements(s) for s in shape)


#: The P×P quantities: the guard asks the backend's estimate of its route (as api does).
_SQUARE = ("hessian", "ggn", "empirical_fisher")


def _square_bytes(model, P: int, itemsize: int, backend: str) -> int:
    """What the guard checks for a P×P result of ``model`` on ``backend`` (a name, or ``"auto"``)."""
    from ._backends import get as get_backend

    estimate = getattr(get_backend(backend, model), "matrix_bytes", None)
    if estimate is None:
        return memory.needed_bytes("hessian", P * P, itemsize)
    return estimate(model, P, itemsize, False)


def _num_samples(X, model) -> int:
    """N of ``X``: a number, an array ``(N, …)``, or for a model with an input signature the
    tuple ``(x, t, …)`` (checked as every public function checks it)."""
    if isinstance(X, (int, np.integer)) and not isinstance(X, bool):
        N = int(X)
    elif isinstance(X, (tuple, list)) and (getattr(model, "inputs", None) is not None or (X and not np.isscalar(X[0]))):
        N = stacked_inputs(tuple(X), getattr(model, "inputs", None)).shape[0]
    else:
        shape = np.shape(X)
        N = shape[0] if shape else 0
    if N < 1:
        raise InputError(f"X must be the inputs (N, d) or a number of samples N >= 1; got {X!r}")
    return N


def _model_sizes(model) -> tuple[int, int, int]:
    if not hasattr(model, "dense_layers"):
        raise InputError(
            f"estimate needs a fluxhess.Chain; got {type(model).__name__}. For a FluxModel pass model.to_spec()[0]"
        )
    return model.num_params, model.in_features, model.out_features


__all__ = ["CurvatureDiagnostics", "MemoryEstimate", "curvature_diagnostics", "estimate"]
