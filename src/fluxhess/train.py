"""Full-batch MAP training: :func:`fit_map`, and the L-BFGS driver it shares with Laplace.

The objective is the summed loss plus a Gaussian prior (weight decay),
``L(θ) = Σ_n ℓ_n(θ) + ½·θᵀ diag(λ) θ``, minimised by L-BFGS (SciPy's ``L-BFGS-B``,
which JAX already depends on) with the loss and gradient of the public API.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import api
from . import _validate as check
from ._types import Inputs, Model
from .errors import ConvergenceWarning, InputError


class MapFit(NamedTuple):
    """The result of `fit_map`.

    Attributes:
        params: θ_MAP `(P,)` float64.
        objective: `L(θ_MAP) = Σ_n ℓ_n + ½ θᵀ diag(λ) θ`.
        gradient_norm: `‖∇L(θ_MAP)‖_∞`.
        iterations: L-BFGS iterations (and Newton steps) taken.
        converged: whether `‖∇L‖_∞ <= gtol` was reached.
        message: the optimiser's message.
    """

    params: np.ndarray  # θ_MAP (P,)
    objective: float  # L(θ_MAP) = Σ_n ℓ_n + ½ θᵀ diag(λ) θ
    gradient_norm: float  # ‖∇L(θ_MAP)‖_∞
    iterations: int
    converged: bool
    message: str

    def _lines(self) -> list[str]:
        state = "converged" if self.converged else "did not converge"
        return [
            f"MapFit: {state} after {self.iterations} L-BFGS iterations ({self.message})",
            f"objective Σ ℓ_n + ½ θᵀ diag(λ) θ = {self.objective:.6g}",
            f"‖∇‖_∞ = {self.gradient_norm:.3g}",
            f"params: θ_MAP of shape {self.params.shape}",
        ]

    def __repr__(self) -> str:
        return "\n".join(self._lines())

    def _repr_html_(self) -> str:
        import html

        head, *rest = self._lines()
        return f"<p><b>{html.escape(head)}</b></p><ul>" + "".join(f"<li>{html.escape(l)}</li>" for l in rest) + "</ul>"


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, *, max_iter: int, gtol: float, desc: str):
    """Minimise ``fun(x) -> (value, gradient)`` from ``x0`` with L-BFGS; a progress bar on a terminal.

    Returns SciPy's ``OptimizeResult``.
    """
    import scipy.optimize

    from ._progress import iterations

    with iterations(max_iter, desc) as bar:
        result = scipy.optimize.minimize(
            fun,
            np.asarray(x0, dtype=np.float64),
            jac=True,
            method="L-BFGS-B",
            callback=lambda *_: bar.update(1),
            options=dict(maxiter=max_iter, maxfun=2 * max_iter + 20, gtol=gtol, ftol=1e-15, maxcor=20),
        )
    return result


def prior_vector(prior_precision, num_params: int) -> np.ndarray:
    """λ as ``(P,)``: one positive value for every parameter, or ``(P,)`` positive values."""
    lam = np.array(check.numeric("prior_precision", prior_precision), dtype=np.float64)
    if lam.ndim == 0:
        lam = np.full(num_params, float(lam))
    if lam.shape != (num_params,):
        raise InputError(f"prior_precision must be a scalar or have shape ({num_params},); got shape {lam.shape}")
    if not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise InputError(f"prior_precision must be finite and >= 0; got values from {lam.min()} to {lam.max()}")
    return lam


def fit_map(
    model: Model,
    params0: ArrayLike,
    X: Inputs,
    y: ArrayLike,
    *,
    loss: str = "mse",
    prior_precision: ArrayLike = 1.0,
    max_iter: int = 1000,
    gtol: float = 1e-8,
    backend: str = "jax",
) -> MapFit:
    """θ_MAP: minimise `Σ_n ℓ_n(θ) + ½·θᵀ diag(λ) θ` over the whole data set by L-BFGS.

    The MAP of a Gaussian-noise regression posterior with noise σ and prior precision λ
    is `fit_map(..., loss="mse", prior_precision=2·σ²·λ)`; a classification posterior
    (`loss="logitcrossentropy"`) needs no conversion. A progress bar shows on a terminal
    or in a notebook; it closes complete when L-BFGS converges early.

    Args:
        model: a `fluxhess.Chain` (or a `fluxhess.FluxModel` on the julia backend).
        params0: θ to start from, `(P,)`.
        X: inputs `(N, d)`.
        y: targets as for `fluxhess.loss`.
        loss: the per-sample loss, summed (`agg="sum"`): `"mse"`, `"crossentropy"`,
            `"logitcrossentropy"`, `"binarycrossentropy"` or `"logitbinarycrossentropy"`.
        prior_precision: λ, a scalar or `(P,)`, `>= 0`.
        max_iter: the most L-BFGS iterations.
        gtol: converged when `‖∇L‖_∞ <= gtol`.
        backend: `"jax"` (default), `"julia"` or `"auto"`.

    Returns:
        A `MapFit` (`params` `(P,)` float64, `objective`, `gradient_norm`, `iterations`,
        `converged`, `message`).

    Raises:
        InputError: a model, `params0`, `X`, `y` or `prior_precision` of the wrong kind or
            shape.

    Warns:
        ConvergenceWarning: (a `RuntimeWarning`) when it did not converge.

    Example:
        A linear model with `mse` is ridge regression:

        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 1, bias=False)); X = np.eye(2); y = np.array([2.0, 4.0])
        >>> np.round(fh.fit_map(m, np.zeros(2), X, y, loss="mse", prior_precision=2.0).params, 6)
        array([1., 2.])
    """
    P = getattr(model, "num_params", None)
    if not isinstance(P, int):
        raise InputError(f"model must be a fluxhess.Chain (or a FluxModel on the julia backend); got {type(model).__name__}")
    theta0 = check.params_array(params0, P, np.dtype(np.float64))
    lam = prior_vector(prior_precision, P)
    max_iter = check.positive_int("max_iter", max_iter)
    gtol = check.positive_number("gtol", gtol)
    api.loss(model, theta0, X, y, loss=loss, agg="sum", backend=backend)  # validates X, y and loss once

    def objective(theta):
        value = api.loss(model, theta, X, y, loss=loss, agg="sum", backend=backend)
        grad = api.gradient(model, theta, X, y, loss=loss, agg="sum", backend=backend)
        return value + 0.5 * float(np.sum(lam * theta**2)), grad + lam * theta

    result = lbfgs(objective, theta0, max_iter=int(max_iter), gtol=gtol, desc="fit_map (L-BFGS)")
    theta, (value, grad) = np.array(result.x), objective(result.x)
    converged, message, iterations = bool(result.success), str(result.message), int(result.nit)
    if not converged and "ABNORMAL" in message:
        # The line search found no decrease: near the minimum the loss's rounding hides it.
        def curvature_times(t, v):
            return api.hvp(model, t, X, y, v, kind="hessian", loss=loss, agg="sum", backend=backend) + lam * v

        theta, value, grad, steps = newton_polish(objective, curvature_times, theta, value, grad, gtol)
        iterations += steps
        if np.max(np.abs(grad)) <= gtol:
            converged, message = True, f"CONVERGENCE: ‖∇L‖_∞ <= gtol after {steps} Newton steps ({message})"
    gnorm = float(np.max(np.abs(grad)))
    if not converged:
        warnings.warn(
            f"fit_map stopped after {iterations} iterations without converging ({message}); "
            f"‖∇L‖_∞ = {gnorm:.3g}. Raise max_iter or loosen gtol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return MapFit(theta, float(value), gnorm, iterations, converged, message)


def newton_polish(objective, curvature_times, x, value, grad, gtol: float, steps: int = 5):
    """Newton steps ``x ← x - A⁻¹∇L`` (CG on products with the curvature ``A``), each kept
    only if it lowers ``‖∇L‖_∞``: judged by the gradient alone, for where the rounding of
    the loss's value stops L-BFGS's line search short of ``gtol``.

    Returns ``(x, value, grad, steps taken)``.
    """
    import scipy.sparse.linalg as sla

    P = x.shape[0]
    for taken in range(steps):
        gnorm = np.max(np.abs(grad))
        if gnorm <= gtol:
            return x, value, grad, taken
        A = sla.LinearOperator((P, P), matvec=lambda v, x=x: curvature_times(x, np.ravel(v)), dtype=np.float64)
        p, _ = sla.cg(A, -grad, maxiter=min(P, 200))
        if not np.all(np.isfinite(p)):
            return x, value, grad, taken
        candidate = x + p
        v, g = objective(candidate)
        if not np.max(np.abs(g)) < gnorm:
            return x, value, grad, taken
        x, value, grad = candidate, v, g
    return x, value, grad, steps
