"""Pictures of curvature: block heatmaps, eigenvalue spectra, a 2-D Laplace predictive.

matplotlib is an optional dependency (``pip install "fluxhess[plot]"``), imported
only when a plot is asked for. Every function builds a fresh
``matplotlib.figure.Figure`` (no pyplot state, so nothing is drawn twice in a
notebook) and returns it: ``fig.savefig("h.png")``, or let the notebook show it.
The figure renders itself as PNG (``_repr_png_``), so a Jupyter kernel displays it
without ``%matplotlib inline``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .errors import FluxHessError, InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .laplace import Laplace
    from .model import ParamLayout

#: Titles of the curvature matrices by the names fluxhess uses.
TITLES = {"hessian": "Hessian", "ggn": "GGN", "empirical_fisher": "empirical Fisher"}


def _figure(**kw):
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise FluxHessError(
            'plots need matplotlib, which is not installed; install it with pip install "fluxhess[plot]"'
        ) from None
    return _notebook_figure()(**kw)


@functools.cache
def _notebook_figure():
    """A ``matplotlib.figure.Figure`` that IPython displays as a PNG image."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """A matplotlib Figure that a notebook shows as an image, with or without ``%matplotlib inline``."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return NotebookFigure


def _named(matrices, what: str) -> dict[str, np.ndarray]:
    if isinstance(matrices, Mapping):
        named = {str(k): np.asarray(v, dtype=np.float64) for k, v in matrices.items()}
    else:
        named = {what: np.asarray(matrices, dtype=np.float64)}
    if not named:
        raise InputError(f"{what}: nothing to plot; got an empty mapping")
    return named


def heatmap(
    matrices: ArrayLike | Mapping[str, ArrayLike], layout: ParamLayout | None = None, *, scale: str = "symlog",
    title: str | None = None,
) -> Figure:
    """One panel per `(P, P)` matrix, on one shared colour scale, with the layout's blocks marked.

    Args:
        matrices: an array `(P, P)`, or a mapping such as `{"hessian": H, "ggn": G}`
            (`curvature_diagnostics(...).matrices`).
        layout: the model's `fluxhess.ParamLayout`; its block edges are drawn and its block
            names label the axes (`L0 W` is `layers.0.weight`).
        scale: `"symlog"` (linear below the median nonzero `|entry|`, logarithmic above, so
            small and large blocks both show) or `"linear"`.
        title: the figure's title.

    Returns:
        The matplotlib `Figure` (it displays itself in a notebook).

    Raises:
        InputError: a matrix that is not square or does not match the layout's P, an
            unknown `scale`.
        FluxHessError: matplotlib is not installed (the `plot` extra).

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> from fluxhess import plot
        >>> m = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 1)); X = np.ones((4, 2))
        >>> d = fh.curvature_diagnostics(m, m.init(0), X, np.zeros(4), backend="jax")
        >>> fig = plot.heatmap(d.matrices, m.layout); len(fig.axes) >= 3
        True
    """
    named = _named(matrices, "matrix")
    for name, M in named.items():
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise InputError(f"{name} must be a square (P, P) matrix; got shape {M.shape}")
        if layout is not None and M.shape[0] != layout.num_params:
            raise InputError(f"{name} is {M.shape} but the layout has P = {layout.num_params} parameters")
    if scale not in ("symlog", "linear"):
        raise InputError(f"scale must be 'symlog' or 'linear'; got {scale!r}")
    from matplotlib.colors import Normalize, SymLogNorm

    entries = np.abs(np.concatenate([M.ravel() for M in named.values()]))
    vmax = float(entries.max(initial=0.0)) or 1.0
    nonzero = entries[entries > 1e-12 * vmax]
    norm: Normalize
    if scale == "symlog" and nonzero.size:
        norm = SymLogNorm(linthresh=float(np.median(nonzero)), vmin=-vmax, vmax=vmax)
    else:
        norm = Normalize(vmin=-vmax, vmax=vmax)
    fig = _figure(figsize=(4.6 * len(named) + 0.8, 4.8), layout="constrained")
    axes = fig.subplots(1, len(named), squeeze=False)[0]
    for ax, (name, M) in zip(axes, named.items()):
        image = ax.imshow(M, cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(TITLES.get(name, name))
        if layout is not None:
            _mark_blocks(ax, layout)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=f"entry ({'symmetric log' if scale == 'symlog' else 'linear'} scale)")
    if title:
        fig.suptitle(title)
    return fig


#: A block is labelled when it spans at least this fraction of θ: at ~2k parameters the
#: biases (a few entries each) would otherwise print their labels over one another.
LABELLED_FRACTION = 0.03


def _mark_blocks(ax, layout) -> None:
    edges = [b.offset for b in layout][1:]
    for e in edges:
        ax.axhline(e - 0.5, color="black", lw=0.7)
        ax.axvline(e - 0.5, color="black", lw=0.7)
    wide = [b for b in layout if b.size >= LABELLED_FRACTION * layout.num_params] or list(layout)
    centres = [b.offset + (b.size - 1) / 2 for b in wide]
    labels = [b.name.replace("layers.", "L").replace(".weight", " W").replace(".bias", " b") for b in wide]
    ax.set_xticks(centres, labels, rotation=90, fontsize=8)
    ax.set_yticks(centres, labels, fontsize=8)
    ax.tick_params(length=0)
    if len(wide) < len(layout):
        ax.set_xlabel(f"{len(layout) - len(wide)} thin blocks (biases) unlabelled", fontsize=7)


def spectra(eigenvalues: ArrayLike | Mapping[str, ArrayLike], *, title: str | None = None) -> Figure:
    """The eigenvalue spectra of several matrices on one logarithmic axis.

    Each spectrum is drawn as `|λ|` sorted from largest to smallest against its rank;
    negative eigenvalues are hollow markers; eigenvalues within round-off of 0 cannot sit
    on a log axis and are counted in the legend instead.

    Args:
        eigenvalues: a mapping `{name: (P,) eigenvalues}` such as
            `curvature_diagnostics(...).eigenvalues`, or one array `(P,)`.
        title: the figure's title.

    Returns:
        The matplotlib `Figure`.

    Raises:
        InputError: an empty mapping.
        FluxHessError: matplotlib is not installed (the `plot` extra).

    Example:
        >>> import numpy as np
        >>> from fluxhess import plot
        >>> fig = plot.spectra({"hessian": np.array([-1.0, 0.5, 2.0]), "ggn": np.array([0.0, 1.0, 3.0])})
    """
    named = _named(eigenvalues, "eigenvalues")
    fig = _figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    markers = iter("osd^v<>")
    for name, lam in named.items():
        lam = np.ravel(lam)
        order = np.argsort(-np.abs(lam))
        lam = lam[order]
        zero = 1e-12 * max(1.0, float(np.max(np.abs(lam), initial=0.0)))
        shown = np.abs(lam) > zero
        rank = np.arange(1, lam.size + 1)
        label = TITLES.get(name, name)
        if not shown.all():
            label += f" ({int((~shown).sum())} of {lam.size} ≈ 0, not shown)"
        marker = next(markers, "o")
        pos, neg = shown & (lam > 0), shown & (lam < 0)
        line = ax.plot(rank[shown], np.abs(lam[shown]), "-", lw=1, alpha=0.6, label=label)[0]
        ax.plot(rank[pos], lam[pos], marker, ls="none", ms=5, color=line.get_color())
        if neg.any():
            ax.plot(rank[neg], -lam[neg], marker, ls="none", ms=6, mfc="none", color=line.get_color(),
                    label=f"{TITLES.get(name, name)}: negative ({int(neg.sum())}), |λ| shown")
    ax.set_yscale("log")
    ax.set_xlabel("rank (by |λ|)")
    ax.set_ylabel("|eigenvalue|")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "eigenvalue spectra")
    return fig


def laplace_predictive(
    la: Laplace, X: ArrayLike, y: ArrayLike, *, resolution: int = 150, padding: float = 1.0, title: str | None = None,
) -> Figure:
    """The predictive of a fitted 2-D classification `fluxhess.Laplace`, and its uncertainty.

    Left: the predicted probability (of class 1 for one output, of the most likely
    class otherwise) on a grid around the data, the Laplace decision boundary (solid)
    and the MAP network's (dashed; with one output and the probit link the two
    coincide, as probit keeps the sign of the logit), the training points coloured
    by label. Right: the standard deviation of the logits under the posterior (the GLM
    predictive's `function_variance`, averaged over the outputs), which grows away from
    the data.

    Args:
        la: a fitted Laplace with `likelihood="classification"` on a model with 2 inputs.
        X: the training inputs `(N, 2)`.
        y: their labels `(N,)`.
        resolution: grid points per axis.
        padding: margin around the data, in input units.
        title: the figure's title.

    Returns:
        The matplotlib `Figure`.

    Raises:
        InputError: a Laplace that is not a 2-input classifier, `X` or `y` of the wrong shape.
        NotFittedError: `la` has not been fitted (raised by its predictive).
        FluxHessError: matplotlib is not installed (the `plot` extra).

    Example:
        >>> import numpy as np, fluxhess as fh
        >>> from fluxhess import plot
        >>> X = np.random.default_rng(0).normal(size=(20, 2)); y = (X[:, 0] > 0).astype(int)
        >>> m = fh.Chain.mlp([2, 4, 2], "tanh")
        >>> la = fh.Laplace(m, m.init(0), "classification", backend="jax").fit(X, y)
        >>> fig = plot.laplace_predictive(la, X, y, resolution=20)
    """
    from .api import forward

    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y).reshape(-1)
    if getattr(la, "likelihood", None) != "classification" or getattr(la.model, "in_features", None) != 2:
        raise InputError("laplace_predictive draws a Laplace with likelihood='classification' on a model with 2 inputs")
    if X.ndim != 2 or X.shape[1] != 2 or labels.shape[0] != X.shape[0]:
        raise InputError(f"X must be (N, 2) with one label per row in y; got X {X.shape}, y {np.shape(y)}")
    lo, hi = X.min(axis=0) - padding, X.max(axis=0) + padding
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.column_stack([g0.ravel(), g1.ravel()])
    pred = la.predictive(grid)
    logits = forward(la.model, la.params, grid)
    binary = pred.mean.shape[1] == 1
    if binary:
        shown, label = pred.mean[:, 0], "p(y = 1)"
        boundary, boundary_map = pred.mean[:, 0], 1 / (1 + np.exp(-logits[:, 0]))
        levels = np.array([0.5])
    else:
        shown, label = pred.mean.max(axis=1), "p(most likely class)"
        boundary, boundary_map = pred.mean.argmax(axis=1), logits.argmax(axis=1)
        levels = np.arange(pred.mean.shape[1] - 1) + 0.5
    std = np.sqrt(pred.function_variance.mean(axis=1))

    fig = _figure(figsize=(11.0, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    shape = g0.shape
    im = left.contourf(g0, g1, shown.reshape(shape), levels=20, cmap="RdBu_r" if binary else "viridis")
    fig.colorbar(im, ax=left, label=label)
    left.contour(g0, g1, boundary.reshape(shape), levels=levels, colors="black", linewidths=1.5)
    left.contour(g0, g1, boundary_map.reshape(shape), levels=levels, colors="black", linewidths=1.0, linestyles="--")
    left.set_title("Laplace predictive; boundary: Laplace (solid), MAP (dashed)", fontsize=10)
    im = right.contourf(g0, g1, std.reshape(shape), levels=20, cmap="magma")
    fig.colorbar(im, ax=right, label="posterior std of the logits")
    right.set_title("uncertainty", fontsize=10)
    for ax in (left, right):
        ax.scatter(X[:, 0], X[:, 1], c=labels, cmap="tab10" if not binary else "bwr", vmin=0,
                   vmax=9 if not binary else 1, edgecolors="white", linewidths=0.8, s=28)
        ax.set_xlabel("x₁")
    left.set_ylabel("x₂")
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["heatmap", "laplace_predictive", "spectra"]
