"""Run the same quantities on several backends and report how far they agree.

:func:`compare` returns a :class:`CompareReport` that prints as a plain table
and renders as HTML in notebooks. Its numbers, per quantity:

- per backend: seconds (the fastest of ``repeat`` calls; the first call of a
  quantity includes compilation), the symmetry error ``max|M − Mᵀ| / max|M|``
  and the smallest and largest eigenvalues of the symmetric part (over every
  ``d×d`` block for ``input_hessian``);
- per pair of backends: ``max|A − B|`` and ``max|A − B| / max(max|A|, max|B|)``;
- the backends that could not run, and why; a backend that fails on one
  quantity shows its error in that row.

The ``fluxhess compare`` command builds a model from a short string
(``"2,5,1:tanh,sigmoid"``), random data for the loss, and prints the report.
"""

from __future__ import annotations

import html
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from numpy.typing import ArrayLike

import numpy as np

from . import api
from . import losses as L
from . import _memory as memory
from . import _validate as check
from . import _origin
from ._backends import NAMES as BACKEND_NAMES
from ._backends import get as get_backend
from ._types import Inputs, Model
from .errors import BackendUnavailableError, FluxHessError, InputError, UnsupportedModelError

#: quantity → (public function, whether it takes targets y and the loss).
#: Each quantity's public function and whether it takes targets ``y``.
QUANTITIES: dict[str, tuple[Callable[..., Any], bool]] = {
    "forward": (api.forward, False),
    "loss": (api.loss, True),
    "gradient": (api.gradient, True),
    "hessian": (api.hessian, True),
    "ggn": (api.ggn, True),
    "empirical_fisher": (api.empirical_fisher, True),
    "param_jacobian": (api.param_jacobian, False),
    "input_jacobian": (api.input_jacobian, False),
    "input_hessian": (api.input_hessian, False),
    "laplacian": (api.laplacian, False),
    "divergence": (api.divergence, False),
}
#: Quantities that are symmetric matrices (the last two axes).
SYMMETRIC = ("hessian", "ggn", "empirical_fisher", "input_hessian")
DEFAULT_QUANTITIES = ("hessian", "ggn", "empirical_fisher", "input_hessian")


@dataclass
class BackendRun:
    """One quantity on one backend; ``error`` is set (and the numbers are None) when it failed."""

    backend: str
    seconds: float | None = None
    symmetry_error: float | None = None
    eig_min: float | None = None
    eig_max: float | None = None
    error: str | None = None


@dataclass
class PairDifference:
    """``max|A − B|`` and ``max|A − B| / max(max|A|, max|B|)`` for backends ``a`` and ``b``."""

    a: str
    b: str
    max_abs: float
    max_rel: float


@dataclass
class QuantityReport:
    name: str
    shape: tuple[int, ...] | None
    runs: list[BackendRun] = field(default_factory=list)
    pairs: list[PairDifference] = field(default_factory=list)


@dataclass
class CompareReport:
    """What :func:`compare` found; ``print(report)`` for a table, notebooks show HTML."""

    setup: str
    quantities: list[QuantityReport]
    unavailable: dict[str, str]
    repeat: int = 1

    def max_relative_difference(self) -> float:
        """The largest relative difference over every quantity and pair (nan when no pair ran)."""
        rel = [p.max_rel for q in self.quantities for p in q.pairs]
        return max(rel) if rel else float("nan")

    def _run_table(self):
        head = ["quantity", "shape", "backend", "seconds", "symmetry err", "eig min", "eig max"]
        rows = []
        for q in self.quantities:
            for i, r in enumerate(q.runs):
                name, shape = (q.name, _shape(q.shape)) if i == 0 else ("", "")
                if r.error is not None:
                    rows.append([name, shape, r.backend, "failed: " + r.error, "", "", ""])
                else:
                    rows.append([name, shape, r.backend, f"{r.seconds:.4f}", _num(r.symmetry_error), _num(r.eig_min), _num(r.eig_max)])
        return head, rows

    def _pair_table(self):
        head = ["quantity", "pair", "max abs diff", "max rel diff"]
        rows = [[q.name, f"{p.a} vs {p.b}", _num(p.max_abs), _num(p.max_rel)] for q in self.quantities for p in q.pairs]
        return head, rows

    def _timing_note(self) -> str:
        if self.repeat == 1:
            return "seconds: one call each; the first call of a quantity includes compilation"
        return f"seconds: the fastest of {self.repeat} calls each"

    def __str__(self) -> str:
        parts = [self.setup, "", text_table(*self._run_table()), self._timing_note()]
        head, rows = self._pair_table()
        parts += ["", text_table(head, rows) if rows else "differences: fewer than two backends ran, nothing to compare"]
        for name, why in self.unavailable.items():
            parts.append(f"unavailable: {name}: {why}")
        return "\n".join(parts)

    __repr__ = __str__  # a notebook's text view shows the tables too

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{html.escape(self.setup)}</b></p>", html_table(*self._run_table()),
                 f"<p><small>{html.escape(self._timing_note())}</small></p>"]
        head, rows = self._pair_table()
        parts.append(html_table(head, rows) if rows else "<p>fewer than two backends ran, nothing to compare</p>")
        if self.unavailable:
            items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(w)}</li>" for n, w in self.unavailable.items())
            parts.append(f"<p>unavailable:</p><ul>{items}</ul>")
        return "\n".join(parts)


def compare(
    model: Model,
    params: ArrayLike,
    X: Inputs,
    y: ArrayLike | None = None,
    *,
    quantities: str | Sequence[str] = DEFAULT_QUANTITIES,
    backends: str | Sequence[str] = ("julia", "jax"),
    loss: str = "mse",
    agg: str = "sum",
    dtype: str = "float64",
    repeat: int = 1,
) -> CompareReport:
    """Compute each of `quantities` on each available backend of `backends`, and compare.

    A backend that cannot run here is listed in the report with the reason, never an
    error, and so is the failure of a backend on one quantity (e.g. `divergence` of a
    model with C ≠ d). A FluxModel runs as itself on julia and as its `to_spec()` Chain
    (with `params`) on backends that need a spec. The report names the model in the words
    of the framework it came from.

    Args:
        model: a `fluxhess.Chain` or a `fluxhess.FluxModel`.
        params: θ `(P,)` in Flux `destructure` order.
        X: inputs `(N, d)` (or the tuple of a model with an input signature).
        y: targets as for `fluxhess.hessian`; needed only by quantities that take a loss.
        quantities: names from `"forward"`, `"loss"`, `"gradient"`, `"hessian"`, `"ggn"`,
            `"empirical_fisher"`, `"param_jacobian"`, `"input_jacobian"`,
            `"input_hessian"`, `"laplacian"`, `"divergence"` (default: the three P×P
            matrices and the input Hessian).
        backends: names from `"julia"`, `"jax"`.
        loss: as for `fluxhess.hessian`: `"mse"`, `"crossentropy"`,
            `"logitcrossentropy"`, `"binarycrossentropy"`, `"logitbinarycrossentropy"`.
        agg: `"sum"` or `"mean"`.
        dtype: `"float64"` or `"float32"`.
        repeat: calls per quantity and backend (≥ 1); the report shows the fastest.

    Returns:
        A `CompareReport`: per quantity and backend the shape, seconds, symmetry error
        and extreme eigenvalues; per pair of backends the largest absolute and relative
        differences. It prints as text tables and renders as HTML in a notebook.

    Raises:
        InputError: input that every backend refuses (a wrong `X` width, an unknown
            `dtype` or quantity, an object that is not a model), checked once before
            anything runs.

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> m = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); X = np.ones((4, 2))
        >>> report = fh.compare(m, m.init(0), X, np.zeros(4), quantities="ggn", backends="jax")
        >>> str(report).splitlines()[0]
        "fluxhess compare: Chain(Dense(2, 3, 'tanh'), Dense(3, 1)); P = 13, N = 4, loss = mse, agg = sum, float64"
    """
    quantities = _names("quantities", quantities, tuple(QUANTITIES))
    names = _names("backends", backends, BACKEND_NAMES)
    repeat = check.positive_int("repeat", repeat)
    check.float_dtype(dtype)
    api.check_model(model)
    if any(QUANTITIES[q][1] for q in quantities):
        L.check_loss(loss)
        L.check_agg(agg)
        if y is None:
            needs = [q for q in quantities if QUANTITIES[q][1]]
            raise InputError(f"y is required for {', '.join(needs)} (they differentiate the loss); got None")
    runnable, unavailable = {}, {}
    for name in names:
        try:
            runnable[name] = _model_for(name, model)
        except (BackendUnavailableError, UnsupportedModelError) as e:
            unavailable[name] = str(e)
    for name, m in list(runnable.items())[:1]:  # input bad for every backend raises here, once
        takes_loss = dict(loss=loss, agg=agg) if any(QUANTITIES[q][1] for q in quantities) else {}
        api.check_arguments(m, params, X, y, backend=name, dtype=dtype, **takes_loss)
    reports = []
    for q in quantities:
        fn, needs_y = QUANTITIES[q]
        kw = dict(loss=loss, agg=agg) if needs_y else {}
        results, report = {}, QuantityReport(q, None)
        for name, m in runnable.items():
            args = (m, params, X, y) if needs_y else (m, params, X)
            try:
                value, seconds = _timed(lambda: fn(*args, backend=name, dtype=dtype, **kw), repeat)
            except FluxHessError as e:
                report.runs.append(BackendRun(name, error=f"{type(e).__name__}: {e}"))
                continue
            value = np.asarray(value, dtype=np.float64)
            results[name] = value
            report.shape = value.shape
            report.runs.append(BackendRun(name, seconds, *_symmetric_summary(value) if q in SYMMETRIC else ()))
        for a, b in itertools.combinations(results, 2):
            report.pairs.append(PairDifference(a, b, *differences(results[a], results[b])))
        reports.append(report)
    return CompareReport(_setup(model, params, X, quantities, loss, agg, dtype), reports, unavailable, repeat)


def differences(A, B) -> tuple[float, float]:
    """``(max|A − B|, max|A − B| / max(max|A|, max|B|))``; the relative one is 0 when both are 0."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.shape != B.shape:
        raise InputError(f"cannot compare results of shapes {A.shape} and {B.shape}")
    diff = float(np.max(np.abs(A - B), initial=0.0))
    scale = max(float(np.max(np.abs(A), initial=0.0)), float(np.max(np.abs(B), initial=0.0)))
    return diff, (diff / scale if scale > 0 else 0.0)


def _symmetric_summary(M: np.ndarray) -> tuple[float, float, float]:
    """Symmetry error ``max|M − Mᵀ| / max|M|`` and the extreme eigenvalues of ``(M + Mᵀ)/2``."""
    Mt = np.swapaxes(M, -1, -2)
    scale = float(np.max(np.abs(M), initial=0.0))
    sym = float(np.max(np.abs(M - Mt), initial=0.0)) / scale if scale > 0 else 0.0
    eig = np.linalg.eigvalsh((M + Mt) / 2)
    return sym, float(eig.min()), float(eig.max())


def _model_for(name: str, model):
    """The model to run on backend ``name``: itself, or its spec Chain where the backend needs one."""
    try:
        get_backend(name, model)
        return model
    except UnsupportedModelError:
        if not hasattr(model, "to_spec"):
            raise
    spec = model.to_spec()[0]
    get_backend(name, spec)
    return spec


def _timed(call, repeat: int):
    best, value = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - t)
    return value, best


def _names(argument: str, value, choices) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise InputError(f"{argument} must be a name or a list of names from {', '.join(choices)}; got {value!r:.80}")
    value = tuple(value)
    bad = [v for v in value if v not in choices]
    if not value or bad:
        raise InputError(f"{argument} must be names from {', '.join(choices)}; got {list(value)!r}")
    return tuple(dict.fromkeys(value))


def _setup(model, params, X, quantities, loss, agg, dtype) -> str:
    describe = _origin.describe(model)  # in the words of the framework the model came from
    first = X[0] if isinstance(X, tuple) and X else X  # the tuple (x, t) of a model with several inputs
    N = np.shape(first)[0] if np.ndim(first) else 0
    uses_loss = any(QUANTITIES[q][1] for q in quantities)
    loss_part = f", loss = {loss}, agg = {agg}" if uses_loss else ""
    return f"fluxhess compare: {describe}; P = {np.size(params)}, N = {N}{loss_part}, {dtype}"


# ---------------------------------------------------------------------------
# Tables (shared with fluxhess.diagnostics)
# ---------------------------------------------------------------------------


def _num(x) -> str:
    return "—" if x is None else f"{x:.3e}"


def _shape(shape) -> str:
    return "—" if shape is None else str(tuple(shape))


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, one header line and a rule."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------
# The `fluxhess compare` command
# ---------------------------------------------------------------------------


def parse_model(text: str):
    """A Chain from ``"2,5,1:tanh,sigmoid"``: widths, then one activation per Dense layer.

    ``softmax``/``logsoftmax`` as the last activation becomes an ``Activation`` layer;
    without ``:...`` hidden layers are tanh and the output is linear.
    """
    from .model import COLUMNWISE, Activation, Chain, Dense

    widths_text, _, acts_text = text.partition(":")
    try:
        widths = [int(w) for w in widths_text.split(",")]
    except ValueError:
        raise InputError(f"--model widths must be integers like '2,5,1'; got {widths_text!r}") from None
    if len(widths) < 2:
        raise InputError(f"--model needs at least two widths (inputs, outputs); got {widths_text!r}")
    n_dense = len(widths) - 1
    acts = acts_text.split(",") if acts_text else ["tanh"] * (n_dense - 1) + ["identity"]
    if len(acts) != n_dense:
        raise InputError(
            f"--model {text!r} has {n_dense} Dense layers but {len(acts)} activations; give one per layer, "
            "e.g. '2,5,1:tanh,sigmoid'"
        )
    layers: list[Dense | Activation] = []
    for i, (a, b, act) in enumerate(zip(widths[:-1], widths[1:], acts)):
        if act in COLUMNWISE and i == n_dense - 1:
            layers += [Dense(a, b), Activation(act)]
        else:
            layers.append(Dense(a, b, act))
    return Chain(*layers)


def random_targets(loss: str, n: int, C: int, rng) -> np.ndarray:
    """Targets valid for ``loss``: normal values for mse, labels/0-1 values for the others."""
    if loss == "mse":
        return rng.normal(size=(n, C))
    if loss in L.CATEGORICAL and C >= 2:
        return rng.integers(0, C, size=n)
    return rng.integers(0, 2, size=(n, C)).astype(float)


def add_arguments(p) -> None:
    p.add_argument("--model", default="2,5,1:tanh,sigmoid", help="widths:activations, e.g. '2,5,1:tanh,sigmoid'")
    p.add_argument("--loss", default="mse", help=f"one of {', '.join(L.LOSSES)}")
    p.add_argument("--agg", default="sum", help="sum or mean")
    p.add_argument("--n", type=int, default=100, help="number of random samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and data")
    p.add_argument("--backends", default="julia,jax", help="comma-separated backend names")
    p.add_argument("--quantities", default=",".join(DEFAULT_QUANTITIES), help=f"comma-separated, from {', '.join(QUANTITIES)}")
    p.add_argument("--repeat", type=int, default=1, help="calls per quantity; the fastest is shown")


def command(args) -> int:
    """Compare quantities across backends on a random model and data."""
    model = parse_model(args.model)
    n = check.positive_int("--n", args.n)
    seed = check.seed("--seed", args.seed)
    memory.require("compare data", 2 * 8 * n * (model.in_features + model.out_features), (n, model.in_features))
    rng = np.random.default_rng(seed)
    theta = model.init(seed)
    X = rng.normal(size=(args.n, model.in_features))
    y = random_targets(L.check_loss(args.loss), args.n, model.out_features, rng)
    report = compare(
        model, theta, X, y, loss=args.loss, agg=args.agg, repeat=args.repeat,
        quantities=args.quantities.split(","), backends=args.backends.split(","),
    )
    print(report)
    return 0


__all__ = ["CompareReport", "compare", "differences"]
