"""Every plot renders to PNG and draws what it says (block edges, spectra, decision boundary)."""

import numpy as np
import pytest

import fluxhess as fh

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'fluxhess[plot]')")
from fluxhess import plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _save(fig, path):
    fig.savefig(path, dpi=80)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, f"{path.name} is not a non-trivial PNG"


@pytest.fixture(scope="module")
def diagnostics():
    model = fh.Chain.mlp([2, 5, 3], "tanh")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2)), rng.integers(0, 3, size=40)
    return fh.curvature_diagnostics(model, model.init(0), X, y, loss="logitcrossentropy", backend="jax")


def test_heatmap_marks_the_layout_blocks(diagnostics, tmp_path):
    layout = diagnostics.layout
    fig = plot.heatmap(diagnostics.matrices, layout, title="tanh MLP 2-5-3")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Hessian", "GGN", "empirical Fisher"]
    assert len(fig.axes) == 4  # three panels and one shared colour bar
    edges = [b.offset - 0.5 for b in layout][1:]
    for ax, name in zip(panels, ["hessian", "ggn", "empirical_fisher"]):
        np.testing.assert_array_equal(ax.images[0].get_array(), diagnostics.matrices[name])
        drawn = sorted({line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]})
        assert drawn == edges
        assert [t.get_text() for t in ax.get_xticklabels()] == ["L0 W", "L0 b", "L1 W", "L1 b"]
    _save(fig, tmp_path / "heatmap.png")
    _save(plot.heatmap(diagnostics.matrices["hessian"], scale="linear"), tmp_path / "heatmap_linear.png")


def test_spectra_on_one_log_axis(diagnostics, tmp_path):
    fig = plot.spectra(diagnostics.eigenvalues)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    lam = diagnostics.eigenvalues["hessian"]
    zero = np.abs(lam) <= 1e-12 * np.abs(lam).max()
    assert labels[0] == f"Hessian ({zero.sum()} of {lam.size} ≈ 0, not shown)"
    assert labels[1] == f"Hessian: negative ({int((~zero & (lam < 0)).sum())}), |λ| shown"
    heights = np.sort(ax.lines[0].get_ydata())[::-1]
    np.testing.assert_allclose(heights, np.sort(np.abs(lam[~zero]))[::-1])
    _save(fig, tmp_path / "spectra.png")


@pytest.mark.parametrize("C", [1, 3])
def test_laplace_predictive_2d_classification(C, tmp_path):
    rng = np.random.default_rng(0)
    centres = [[-1.5, 0.0], [1.5, 0.5], [0.0, 2.5]][: max(C, 2)]
    X = np.vstack([rng.normal(c, 0.7, size=(20, 2)) for c in centres])
    y = np.repeat(np.arange(len(centres)), 20)
    model = fh.Chain.mlp([2, 8, C], "tanh")
    loss = "logitbinarycrossentropy" if C == 1 else "logitcrossentropy"
    fit = fh.fit_map(model, model.init(0), X, y, loss=loss, prior_precision=1.0)
    la = fh.Laplace(model, fit.params, "classification", prior_precision=1.0).fit(X, y)
    fig = plot.laplace_predictive(la, X, y, resolution=60)
    left, right = fig.axes[0], fig.axes[1]
    assert "boundary" in left.get_title() and right.get_title() == "uncertainty"
    assert len(fig.axes) == 4  # two panels, two colour bars
    _save(fig, tmp_path / f"laplace_predictive_C{C}.png")


def test_plot_arguments_are_checked(diagnostics):
    with pytest.raises(fh.InputError, match="square"):
        plot.heatmap(np.zeros((3, 4)))
    with pytest.raises(fh.InputError, match="layout has P = 33"):
        plot.heatmap(np.zeros((4, 4)), diagnostics.layout)
    with pytest.raises(fh.InputError, match="scale"):
        plot.heatmap(np.eye(2), scale="log")


def test_heatmap_of_2k_parameters_keeps_its_block_labels_apart(tmp_path):
    """P = 2,163: the bias blocks (3 to 40 entries) are too thin to label; the labels drawn do not overlap."""
    model = fh.Chain.mlp([20, 40, 30, 3], "tanh")
    P = model.num_params
    M = np.diag(np.linspace(1.0, 2.0, P)) + 0.01
    fig = plot.heatmap({"ggn": M}, model.layout)
    _save(fig, tmp_path / "heatmap_2k.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["L0 W", "L1 W", "L2 W"] and "3 thin blocks (biases) unlabelled" in ax.get_xlabel()
    fig.draw_without_rendering()
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent() for t in ticks]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "tick labels overlap"


def test_figures_display_as_png_in_a_notebook(diagnostics):
    data = plot.spectra(diagnostics.eigenvalues)._repr_png_()
    assert data.startswith(PNG) and len(data) > 10_000
