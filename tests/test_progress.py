"""Progress bars of the iterative loops: complete when the loop converged early, short
(tqdm's notebook bar: red, "danger") only when it stopped on an error."""

import io

import numpy as np
import pytest
import tqdm.std

import fluxhess as fh
from fluxhess import _progress as progress


class RecordingBar(tqdm.std.tqdm):
    """A text bar that always counts (even off a terminal) and records, when closed, what
    tqdm's notebook bar decides then: red when ``total`` is set and ``n < total``."""

    made: list["RecordingBar"] = []

    def __init__(self, *args, **kwargs):
        kwargs.update(disable=False, file=io.StringIO())
        super().__init__(*args, **kwargs)
        RecordingBar.made.append(self)

    def close(self):
        if not self.disable:
            self.red = bool(self.total) and self.n < self.total
        super().close()


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(progress, "bar_class", lambda: RecordingBar)
    return RecordingBar.made


def test_fit_map_that_converges_early_closes_its_bar_complete(bars):
    rng = np.random.default_rng(0)
    model = fh.Chain(fh.Dense(3, 2))
    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    fit = fh.fit_map(model, np.zeros(model.num_params), X, y, loss="mse", max_iter=500)
    assert fit.converged and 0 < fit.iterations < 500
    (bar,) = bars
    assert bar.n == bar.total == fit.iterations
    assert not bar.red


def test_optimize_prior_precision_closes_its_bar_complete(bars):
    rng = np.random.default_rng(1)
    model = fh.Chain.mlp([2, 3, 1], "tanh")
    X, y = rng.normal(size=(15, 2)), rng.normal(size=15)
    la = fh.Laplace(model, model.init(0), "regression", backend="jax").fit(X, y)
    la.optimize_prior_precision(method="marglik")
    assert bars, "the marginal-likelihood optimiser showed no bar"
    for bar in bars:
        assert 0 < bar.n == bar.total
        assert not bar.red


def test_a_loop_that_fails_leaves_its_bar_short(bars):
    with pytest.raises(RuntimeError):
        with progress.iterations(100, "failing") as bar:
            bar.update(3)
            raise RuntimeError("the objective failed")
    assert (bar.n, bar.total, bar.red) == (3, 100, True)


def test_iterations_counts_each_step(bars):
    with progress.iterations(50, "steps") as bar:
        for _ in range(7):
            bar.update(1)
    assert (bar.n, bar.total, bar.red) == (7, 7, False)
