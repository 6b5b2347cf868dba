"""The benchmark problems: the same model, weights and data for every library.

Curvature: a tanh MLP ``[d, h, h, C]`` with ``C = 3`` outputs, ``mse`` summed over the
batch (``L = Σ_n ‖f(x_n) - y_n‖²``), ``N = 1000`` samples; P ≈ 1k, 5k and 20k.
Laplacian: a tanh MLP ``[100, 128, 128, 128, 1]`` on a batch of 256.
Generic (the julia backend's route for models that are not Dense chains): a Conv model
on 8×8 images and a Chain with an anonymous layer, ``mse`` summed over N = 1000.
JAX function (:func:`jax_function_problems`): a residual MLP written as a plain JAX function
over a pytree (``fluxhess.from_jax``), ``x ↦ h + tanh(h W_r)`` with ``h = tanh(x W_1 + b_1)``,
``[16, 64, 64, 3]`` (P ≈ 5.4k), ``mse`` summed over N = 500: what a JAX user would hand fluxhess.
CNN (:func:`cnn_problem`): two 3×3 CrossCor + relu + 2×2 max-pool stages and a Dense head
on 8×8 single-channel images, C = 10, P = 6,090, ``mse`` summed over N = 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import fluxhess as fh


@dataclass
class Problem:
    name: str
    widths: list[int]
    n: int
    dtype: str
    theta: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    Y: np.ndarray = field(repr=False)

    source: str = ""  # Julia source of a Flux model; empty for the tanh MLP of ``widths``
    #: ``(apply, params pytree, fluxhess.JaxFunction)`` of a JAX-function problem, else None
    function: tuple | None = field(default=None, repr=False)
    spec: fh.Chain | None = None  # a Chain spec other than the tanh MLP of ``widths`` (the CNN)

    @property
    def flux(self) -> bool:
        """A Flux model written in Julia (only the julia backend runs it)."""
        return bool(self.source)

    @property
    def jax_function(self) -> bool:
        """A plain JAX function (fluxhess.from_jax): only fluxhess's JAX backend and JAX peers run it."""
        return self.function is not None

    @property
    def model(self):
        if self.jax_function:
            return self.function[2]
        if self.spec is not None:
            return self.spec
        return fh.flux_model(self.source) if self.flux else fh.Chain.mlp(self.widths, "tanh")

    @property
    def P(self) -> int:
        return self.theta.size

    @property
    def data_bytes(self) -> int:
        return self.theta.nbytes + self.X.nbytes + self.Y.nbytes

    def torch_order(self) -> np.ndarray:
        """``perm`` with ``theta[i] == torch_flat[perm[i]]``.

        torch flattens each array in C order of its own shape; fluxhess holds Julia's arrays
        column-major: a Dense weight ``(out, in)`` has torch's shape, a kernel ``(k_w, k_h, cin, cout)``
        torch's ``(cout, cin, k_h, k_w)`` reversed.
        """
        index = self.model.unflatten(np.arange(self.P, dtype=float))
        torch_flat = np.concatenate([torch_layout(a).ravel() for a in index.values()]).astype(int)
        perm = np.empty(self.P, dtype=int)
        perm[torch_flat] = np.arange(self.P)
        return perm


def torch_layout(a: np.ndarray) -> np.ndarray:
    """An array of :meth:`fluxhess.Chain.unflatten` in torch's layout (see :meth:`Problem.torch_order`)."""
    return np.ascontiguousarray(a if a.ndim <= 2 else a.transpose(tuple(reversed(range(a.ndim)))))


def make(name: str, widths: list[int], n: int, dtype: str = "float64", seed: int = 0) -> Problem:
    model = fh.Chain.mlp(widths, "tanh")
    rng = np.random.default_rng(seed)
    theta = (model.init(seed) + 0.01 * rng.normal(size=model.num_params)).astype(dtype)
    X = rng.normal(size=(n, widths[0])).astype(dtype)
    Y = rng.normal(size=(n, widths[-1])).astype(dtype)
    return Problem(name, widths, n, dtype, theta, X, Y)


def curvature_problems(quick: bool, dtype: str) -> list[Problem]:
    if quick:
        return [make("quick", [4, 12, 12, 3], 64, dtype)]
    return [make("P=1k", [16, 32, 16, 3], 1000, dtype), make("P=5k", [16, 64, 64, 3], 1000, dtype),
            make("P=20k", [16, 128, 128, 3], 1000, dtype)]


#: The CNN problem's model: CrossCor (PyTorch's Conv2d) so every peer runs it as written.
CNN = fh.Chain(
    fh.CrossCor((3, 3), 1, 16, "relu", padding=1), fh.MaxPool((2, 2)), fh.CrossCor((3, 3), 16, 32, "relu", padding=1),
    fh.MaxPool((2, 2)), fh.Flatten(), fh.Dense(128, 10), input_shape=(1, 8, 8),
)


#: The CNN problem's number of samples (``run.py --cnn-n`` adds others).
CNN_SAMPLES = 500


#: ``--quick``'s CNN: the same kinds of layers, small enough for a smoke test of every peer.
CNN_QUICK = fh.Chain(
    fh.CrossCor((3, 3), 1, 2, "relu", padding=1), fh.MaxPool((2, 2)), fh.Flatten(), fh.Dense(8, 3), input_shape=(1, 4, 4),
)


def cnn_problem(quick: bool, dtype: str, seed: int = 0, n: int = CNN_SAMPLES) -> Problem:
    """:data:`CNN` on ``n`` images 8×8 (``quick``: :data:`CNN_QUICK` on 16 images 4×4), targets
    normal, ``mse`` summed. The images of a smaller ``n`` are the first ``n`` of the default
    :data:`CNN_SAMPLES`; its name says ``n`` where it is not the default."""
    model, name = (CNN_QUICK, "cnn quick") if quick else (CNN, f"cnn P={CNN.num_params}")
    total = 16 if quick else max(n, CNN_SAMPLES)
    n = 16 if quick else n
    if not quick and n != CNN_SAMPLES:
        name += f" N={n}"
    rng = np.random.default_rng(seed)
    theta = (model.init(seed) + 0.01 * rng.normal(size=model.num_params)).astype(dtype)
    X = rng.normal(size=(total, model.in_features)).astype(dtype)[:n]
    Y = rng.normal(size=(total, model.out_features)).astype(dtype)[:n]
    return Problem(name, [model.in_features, model.out_features], n, dtype, theta, X, Y, spec=model)


def laplacian_problem(quick: bool, dtype: str) -> Problem:
    if quick:
        return make("laplacian quick", [10, 16, 16, 1], 16, dtype)
    return make("laplacian", [100, 128, 128, 128, 1], 256, dtype)


#: Flux models that are not Dense chains, ``(name, source, input width, outputs)``.
GENERIC = [
    ("conv", "Chain(x -> reshape(x, 8, 8, 1, :), Conv((3, 3), 1 => 8, tanh), Flux.flatten, "
             "Dense(288 => 16, tanh), Dense(16 => 3))", 64, 3),
    ("anonymous", "Chain(Dense(16 => 64, tanh), x -> 2 .* x, Dense(64 => 64, tanh), Dense(64 => 3))", 16, 3),
]


def generic_problems(quick: bool, dtype: str) -> list[Problem]:
    """The GENERIC models with their Julia-initialised weights (needs the julia backend)."""
    out = []
    for name, source, d, C in GENERIC:
        n = 32 if quick else 1000
        rng = np.random.default_rng(0)
        theta = fh.flux_model(source).params.astype(dtype)
        X = rng.normal(size=(n, d)).astype(dtype)
        Y = rng.normal(size=(n, C)).astype(dtype)
        out.append(Problem(name, [d, C], n, dtype, theta, X, Y, source))
    return out


def residual_apply(p, X):
    """The residual MLP of the JAX-function problem, batched: ``(N, d) -> (N, C)``."""
    import jax.numpy as jnp

    h = jnp.tanh(X @ p["in"]["kernel"] + p["in"]["bias"])
    h = h + jnp.tanh(h @ p["res"]["kernel"] + p["res"]["bias"])
    return h @ p["out"]["kernel"] + p["out"]["bias"]


def jax_function_problems(quick: bool, dtype: str) -> list[Problem]:
    """The residual MLP as a JaxFunction: ``[4, 12, 12, 3]`` on 32 samples quick, else ``[16, 64, 64, 3]`` on 500."""
    d, h, C, n = (4, 12, 3, 32) if quick else (16, 64, 3, 500)
    rng = np.random.default_rng(0)
    params = {
        "in": {"kernel": rng.normal(size=(d, h)) / np.sqrt(d), "bias": 0.1 * rng.normal(size=h)},
        "res": {"kernel": rng.normal(size=(h, h)) / np.sqrt(h), "bias": 0.1 * rng.normal(size=h)},
        "out": {"kernel": rng.normal(size=(h, C)) / np.sqrt(h), "bias": np.zeros(C)},
    }
    model, theta = fh.from_jax(residual_apply, params, d)
    X = rng.normal(size=(n, d)).astype(dtype)
    Y = rng.normal(size=(n, C)).astype(dtype)
    name = "jax-function quick" if quick else "jax-function P=5k"
    return [Problem(name, [d, h, h, C], n, dtype, theta.astype(dtype), X, Y, function=(residual_apply, params, model))]
