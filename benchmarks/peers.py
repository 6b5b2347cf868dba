"""Every library's way to compute each quantity, on one :class:`problems.Problem`.

An implementation is ``build(problem, quantity) -> fn | None``: ``fn()`` computes the whole
quantity (that call is what gets timed), ``None`` means the library does not offer it.
Results are NumPy arrays in fluxhess's parameter order, or torch tensors in torch's order
(``Impl.layout == "torch"``), or for ``kron-*`` whatever the library returns (not checked).

Curvature quantities: ``hessian``, ``ggn``, ``ef``, ``diag-hessian``, ``diag-ggn``,
``diag-ef``, ``kron-ggn``, ``kron-ef``; and ``laplacian`` on the Laplacian problem.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fluxhess as fh
import problems
from fluxhess._backends.jax import JaxBackend
from fluxhess._backends.jax.chunked import activation_floats
from fluxhess._problem import Problem
from fluxhess.layers import CrossCor, MaxPool
from fluxhess.model import Dense, Flatten

CURVATURE = ["hessian", "ggn", "ef", "diag-hessian", "diag-ggn", "diag-ef", "kron-ggn", "kron-ef"]
MATRICES = ("hessian", "ggn", "ef")


@dataclass(frozen=True)
class Impl:
    library: str
    peer: bool  # False for fluxhess itself and for plain-JAX reference routes
    build: Callable
    layout: str = "fluxhess"  # or "torch": parameters in torch's order
    needs: tuple[str, ...] = ()  # modules that must be importable
    compiles: bool = False  # JAX and Julia: the first call compiles, so it is never a timed run
    backend: str | None = None  # a fluxhess backend that must be available here
    any_model: bool = False  # runs Flux models written in Julia, not only the tanh MLPs
    jax_function: bool = False  # runs the plain JAX functions (problems.jax_function_problems)

    def missing(self) -> list[str]:
        absent = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if self.backend is not None:
            why = fh.backends()[self.backend]
            if why is not None:
                absent.append(f"the {self.backend} backend ({why.split('. ')[0]})")
        return absent


# --- fluxhess ----------------------------------------------------------------


def _fluxhess_on(backend: str):
    """fluxhess's public functions on one backend."""

    def build(problem, quantity):
        m, t, X, Y, dt = problem.model, problem.theta, problem.X, problem.Y, problem.dtype
        kw = dict(loss="mse", backend=backend, dtype=dt)
        if quantity == "laplacian":
            return lambda: fh.laplacian(m, t, X, backend=backend, dtype=dt)
        # Compile on two samples first where the first call compiles for the model's type (a Flux
        # model, or the CNN spec on julia's convolutional route): the timed calls then do not.
        warm = problem.flux or problem.spec is not None
        if quantity in MATRICES:
            fn = {"hessian": fh.hessian, "ggn": fh.ggn, "ef": fh.empirical_fisher}[quantity]
            if warm:
                fn(m, t, X[:2], Y[:2], **kw)
            return lambda: fn(m, t, X, Y, **kw)
        what, kind = quantity.split("-")
        call = fh.diagonal if what == "diag" else fh.kron
        if warm:
            call(m, t, X[:2], Y[:2], kind=kind, **kw)
        return lambda: call(m, t, X, Y, kind=kind, **kw)

    return build


def _julia_per_sample_loop(problem, quantity):
    """The julia backend's GGN and EF before it had batched routes: one Zygote call per
    sample (C pullbacks per sample for the GGN). Its Hessian is
    :func:`_julia_forward_over_reverse`."""
    if quantity not in ("ggn", "ef") or not problem.flux:  # the generic route's problems only
        return None
    return _julia_function(problem, _PER_SAMPLE_LOOP, quantity)


def _julia_function(problem, source: str, *args):
    """The Julia function ``source``, ``(FH, model, θ, X, Y, args...) -> array``, on ``problem``'s
    Flux model: compiled on two samples first, then a call on all of them."""
    from fluxhess._backends import REGISTRY

    backend = REGISTRY["julia"]
    fh_jl = backend.julia()
    fn = backend._jl.seval(source)
    model = backend.model(problem.model, problem.dtype)
    t, X, Y = problem.theta, problem.X, problem.Y
    fn(fh_jl, model, t, X[:2], Y[:2], *args)
    return lambda: np.asarray(fn(fh_jl, model, t, X, Y, *args))


_PER_SAMPLE_LOOP = """
function (FH, model, θ, X, Y, quantity)
    p = FH.problem(model, θ, X, Y, "mse", "sum")
    P, N = length(p.θ), size(p.X, 2)
    M = zeros(eltype(p.θ), P, P)
    for n in 1:N
        xn, yn = p.X[:, n:n], p.Y[:, n:n]
        if quantity == "ggn"
            ŷ, Jn = FH.FluxHess.Zygote.withjacobian(ϑ -> p.re(ϑ)(xn), p.θ)
            Λn = FH.FluxHess.ForwardDiff.hessian(u -> p.ℓ(reshape(u, :, 1), yn; agg = sum), vec(ŷ))
            M .+= transpose(Jn[1]) * (Λn * Jn[1])
        else
            g = FH.FluxHess.Zygote.gradient(ϑ -> p.ℓ(p.re(ϑ)(xn), yn; agg = sum), p.θ)[1]
            M .+= g * transpose(g)
        end
    end
    return M
end
"""


def _julia_forward_over_reverse(problem, quantity):
    """The julia backend's Hessian of a Flux model before its layer-by-layer routes:
    ForwardDiff's Jacobian of Zygote's gradient of the batch loss, 12 directions a pass."""
    if quantity != "hessian" or not problem.flux:
        return None
    return _julia_function(problem, _FORWARD_OVER_REVERSE)


_FORWARD_OVER_REVERSE = """
function (FH, model, θ, X, Y)
    p = FH.problem(model, θ, X, Y, "mse", "sum")
    L(ϑ) = p.ℓ(p.re(ϑ)(p.X), p.Y; agg = sum)
    F = FH.FluxHess.ForwardDiff
    config = F.JacobianConfig(nothing, p.θ, F.Chunk{12}())
    return F.jacobian(ϑ -> FH.FluxHess.Zygote.gradient(L, ϑ)[1], p.θ, config)
end
"""


def _generic_jax(problem, quantity):
    """fluxhess's generic route (chunked HVPs, per-sample Jacobians): what plain JAX gives."""
    b = JaxBackend(structured=False)
    call = Problem(problem.model, problem.theta, problem.X, problem.Y, "mse", "sum")
    if quantity in MATRICES:
        fn = {"hessian": b.hessian, "ggn": b.ggn, "ef": b.empirical_fisher}[quantity]
        return lambda: fn(call)
    if quantity.startswith("diag-"):
        return lambda: b.diagonal(call, quantity[5:])
    return None


# --- plain JAX and laplax on a JAX function ---------------------------------------


def _on_function(problem):
    """``(f, loss, sample_loss, θ, X, Y)`` of a JAX-function problem in flat θ (``ravel_pytree``,
    fluxhess's order), or None for the other problems."""
    if not problem.jax_function:
        return None
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    apply, params, _ = problem.function
    with _precision_scope(problem):
        _, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, problem.dtype), params))
        X, Y, theta = jnp.asarray(problem.X), jnp.asarray(problem.Y), jnp.asarray(problem.theta)
    f = lambda t, Xb: apply(unravel(t), Xb)  # noqa: E731
    loss = lambda t: jnp.sum((f(t, X) - Y) ** 2)  # noqa: E731
    sample_loss = lambda t, x, y: jnp.sum((f(t, x[None])[0] - y) ** 2)  # noqa: E731
    return f, loss, sample_loss, theta, X, Y


def _jax_baseline(problem, quantity):
    """What a JAX user writes: ``jit(jax.hessian(loss))``; ``2·Σ_n J_nᵀ J_n`` with ``J_n`` from
    ``vmap(jacrev)`` per sample (mse: ``Λ_n = 2 I``); ``GᵀG`` from ``vmap(grad)``."""
    pieces = _on_function(problem)
    if pieces is None or quantity not in MATRICES:
        return None
    import jax
    import jax.numpy as jnp

    f, loss, sample_loss, theta, X, Y = pieces
    if quantity == "hessian":
        fn = jax.jit(jax.hessian(loss))
    elif quantity == "ggn":
        def fn(t):
            J = jax.vmap(jax.jacrev(lambda t, x: f(t, x[None])[0]), (None, 0))(t, X)  # (N, C, P)
            J = J.reshape(-1, t.shape[0])
            return 2.0 * J.T @ J
        fn = jax.jit(fn)
    else:
        def fn(t):
            G = jax.vmap(jax.grad(sample_loss), (None, 0, 0))(t, X, Y)
            return G.T @ G
        fn = jax.jit(fn)
    return _scoped(problem, lambda: np.asarray(fn(theta)))


def _laplax(problem, quantity):
    """laplax 0.0.2: its GGN-vector product (mse: ``Λ = 2 I``) made dense by ``estimate_curvature("full")``."""
    if not problem.jax_function or quantity != "ggn":
        return None
    from laplax.curv import create_ggn_mv, estimate_curvature

    apply, params, _ = problem.function
    import jax.numpy as jnp

    with _precision_scope(problem):
        data = {"input": jnp.asarray(problem.X), "target": jnp.asarray(problem.Y)}
        params = {k: {n: jnp.asarray(a, problem.dtype) for n, a in v.items()} for k, v in params.items()}
        ggn_mv = create_ggn_mv(lambda input, params: apply(params, input[None])[0], params, data, loss_fn="mse")
    return _scoped(problem, lambda: np.asarray(estimate_curvature("full", ggn_mv, layout=params)))


# --- torch-based peers ---------------------------------------------------------


def _torch_model(problem):
    """The problem's model in torch (:data:`TORCH_LAYERS`), weights copied in torch's layout."""
    import torch

    blocks, dtype = problem.model.unflatten(problem.theta), getattr(torch, problem.dtype)
    layers = []
    for i, layer in enumerate(problem.model.layers):
        module = TORCH_LAYERS[type(layer)](layer).to(dtype)
        layers.append(module)
        if layer.num_params:
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(problems.torch_layout(blocks[f"layers.{i}.weight"])))
                module.bias.copy_(torch.from_numpy(np.ascontiguousarray(blocks[f"layers.{i}.bias"])))
        activation = getattr(layer, "activation", "identity")
        if activation != "identity":
            layers.append(TORCH_ACTIVATIONS[activation](layer))
    return torch.nn.Sequential(*layers)


def _torch_conv(layer):
    import torch

    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[layer.rank]
    pads = layer.pads
    if any(lo != hi for lo, hi in pads):
        raise ValueError(f"torch's Conv takes symmetric padding; got {pads}")
    return conv(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=tuple(lo for lo, _ in pads), dilation=layer.dilation, groups=layer.groups)


def _torch_max_pool(layer):
    import torch

    pool = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}[layer.rank]
    return pool(layer.window, stride=layer.stride)


def _torch_module(name):
    """A layer builder that makes ``torch.nn.<name>()`` from a spec layer with no options used."""

    def build(layer):
        import torch

        return getattr(torch.nn, name)()

    return build


def _torch_linear(layer):
    import torch

    return torch.nn.Linear(layer.in_features, layer.out_features)


#: The torch module of each spec layer class the benchmark problems use (CrossCor is torch's Conv).
TORCH_LAYERS = {Dense: _torch_linear, CrossCor: _torch_conv, MaxPool: _torch_max_pool, Flatten: _torch_module("Flatten")}
#: The torch module of each activation the benchmark problems use.
TORCH_ACTIVATIONS = {"tanh": _torch_module("Tanh"), "relu": _torch_module("ReLU")}


def _tensors(problem):
    """X in the model's sample shape ``(N, *input_shape)`` and Y, as torch tensors."""
    import torch

    return torch.from_numpy(problem.X.reshape(-1, *problem.model.input_shape)), torch.from_numpy(problem.Y)


#: Memory of one chunk of samples of torch.func's Hessian: P tangents of each sample's forward
#: and backward passes (four numbers per activation, as fluxhess estimates its own).
TORCH_HESSIAN_BYTES = 2**31


def _torch_func(problem, quantity):
    """torch.func: ``jacfwd(jacrev(loss))`` (forward over reverse, all P tangents at once) summed
    over chunks of samples, vmapped per-sample Jacobians and gradients."""
    if quantity not in MATRICES:
        return None
    import torch
    from torch.func import functional_call, grad, jacfwd, jacrev, vmap

    model = _torch_model(problem)
    X, Y = _tensors(problem)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sizes = [int(np.prod(s)) for s in shapes]

    def f(flat, x):
        parts = torch.split(flat, sizes)
        return functional_call(model, {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}, (x,))

    if quantity == "hessian":  # forward over reverse, summed over chunks of samples that fit TORCH_HESSIAN_BYTES
        loss = lambda flat, x, y: ((f(flat, x) - y) ** 2).sum()  # noqa: E731
        hessian = jacfwd(jacrev(loss))
        per_sample = 4 * flat0.numel() * activation_floats(problem.model) * flat0.element_size()
        step = max(1, TORCH_HESSIAN_BYTES // per_sample)

        def summed():
            H = hessian(flat0, X[:step], Y[:step])
            for i in range(step, X.shape[0], step):
                H += hessian(flat0, X[i : i + step], Y[i : i + step])
            return H

        return summed
    if quantity == "ggn":  # mse: Λ = 2I, so GGN = 2 JᵀJ

        def ggn():
            J = vmap(jacrev(lambda flat, x: f(flat, x[None])[0]), in_dims=(None, 0))(flat0, X)
            J = J.reshape(-1, flat0.numel())
            return 2 * J.T @ J

        return ggn

    def ef():
        G = vmap(grad(lambda flat, x, y: ((f(flat, x[None])[0] - y) ** 2).sum()), in_dims=(None, 0, 0))(flat0, X, Y)
        return G.T @ G

    return ef


_LAPLACE_OFFERS = {
    "Hessian": {"hessian": "full"},
    "GGN": {"ggn": "full", "diag-ggn": "diag", "kron-ggn": "kron"},
    "EF": {"ef": "full", "diag-ef": "diag", "kron-ef": "kron"},
}


def _laplace(prefix: str):
    """laplace-torch's curvature backend ``{prefix}{Hessian,GGN,EF}`` (regression: ½·mse)."""

    def build(problem, quantity):
        import laplace.curvature as lc

        for kind, offers in _LAPLACE_OFFERS.items():
            method = offers.get(quantity)
            cls = getattr(lc, prefix + kind, None)
            if method and cls is not None:
                break
        else:
            return None
        model = _torch_model(problem)
        model.output_size = problem.Y.shape[1]  # laplace-torch's Laplace class sets this before using a backend
        backend = cls(model, "regression")
        X, Y = _tensors(problem)
        if method == "kron":
            return lambda: backend.kron(X, Y, N=problem.n)[1]
        return lambda: getattr(backend, method)(X, Y)[1]

    return build


def _asdl(problem, quantity):
    """ASDL's FisherMaker with a full shape: the exact GGN (``fisher_exact``) and the EF (``fisher_emp``)."""
    if quantity not in ("ggn", "ef"):
        return None
    import torch
    from asdl.fisher import FisherConfig, get_fisher_maker
    from asdl.grad_maker import LOSS_MSE
    from asdl.matrices import FISHER_EMP, FISHER_EXACT, SHAPE_FULL

    model = _torch_model(problem)
    X, Y = _tensors(problem)
    kind = FISHER_EXACT if quantity == "ggn" else FISHER_EMP
    config = FisherConfig(fisher_type=kind, loss_type=LOSS_MSE, fisher_shapes=[SHAPE_FULL], data_size=1)

    def full():
        if hasattr(model, "fisher"):
            del model.fisher  # ASDL keeps an existing result instead of computing a new one
        maker = get_fisher_maker(model, config)
        output = maker.setup_model_call(model, X)
        if kind == FISHER_EMP:
            maker.setup_loss_call(torch.nn.MSELoss(reduction="sum"), output, Y)
        maker.forward_and_backward()
        return model.fisher.data

    return full


def _backpack(problem, quantity):
    """BackPACK's extensions: SqrtGGNExact, BatchGrad, DiagHessian, DiagGGNExact, SumGradSquared, KFLR."""
    import torch
    from backpack import backpack, extend
    from backpack import extensions as ext

    model = extend(_torch_model(problem))
    lossfunc = extend(torch.nn.MSELoss(reduction="sum"))
    X, Y = _tensors(problem)
    N, C = problem.Y.shape

    def collect(extension, attr):
        model.zero_grad()
        with backpack(extension):
            lossfunc(model(X), Y).backward()
        return [getattr(p, attr) for p in model.parameters()]

    if quantity == "ggn":

        def ggn():
            V = torch.cat([v.reshape(C * N, -1) for v in collect(ext.SqrtGGNExact(), "sqrt_ggn_exact")], dim=1)
            return V.T @ V

        return ggn
    if quantity == "ef":

        def ef():
            G = torch.cat([g.reshape(N, -1) for g in collect(ext.BatchGrad(), "grad_batch")], dim=1)
            return G.T @ G

        return ef
    diag = {
        "diag-hessian": (ext.DiagHessian, "diag_h"),
        "diag-ggn": (ext.DiagGGNExact, "diag_ggn_exact"),
        "diag-ef": (ext.SumGradSquared, "sum_grad_squared"),
    }
    if quantity in diag:
        extension, attr = diag[quantity]
        return lambda: torch.cat([d.reshape(-1) for d in collect(extension(), attr)])
    if quantity == "kron-ggn":
        return lambda: collect(ext.KFLR(), "kflr")
    return None


def _curvlinops_kfac(problem, quantity):
    """curvlinops' ``KFACLinearOperator`` factors (KFC "expand"; exact type-2 GGN or empirical Fisher)."""
    fisher_type = {"kron-ggn": "type-2", "kron-ef": "empirical"}.get(quantity)
    if fisher_type is None:
        return None
    import torch
    from curvlinops import KFACLinearOperator

    model = _torch_model(problem)
    data = [_tensors(problem)]

    def factors():
        kfac = KFACLinearOperator(model, torch.nn.MSELoss(reduction="sum"), list(model.parameters()), data,
                                  fisher_type=fisher_type, separate_weight_and_bias=False, check_deterministic=False)
        kfac.compute_kronecker_factors()
        return kfac.state_dict()["gradient_covariances"]

    return factors


# --- Laplacian ---------------------------------------------------------------------


def _jax_apply(problem):
    """The Laplacian problem's MLP written directly in jax.numpy, for one sample ``x`` ``(d,)``."""
    import jax.numpy as jnp

    blocks = problem.model.unflatten(problem.theta)
    dense = problem.model.dense_layers
    weights = [(jnp.asarray(blocks[f"layers.{i}.weight"]), jnp.asarray(blocks[f"layers.{i}.bias"])) for i, _ in dense]

    def f(x):
        for k, (W, b) in enumerate(weights):
            x = W @ x + b
            if k < len(weights) - 1:
                x = jnp.tanh(x)
        return x

    return f


def _precision_scope(problem):
    import jax

    return jax.enable_x64(problem.dtype == "float64")


def _folx(problem, quantity):
    if quantity != "laplacian":
        return None
    import jax
    from folx import forward_laplacian

    with _precision_scope(problem):
        f = _jax_apply(problem)
        fn = jax.jit(jax.vmap(lambda x: forward_laplacian(f, sparsity_threshold=0)(x).laplacian))
        X = jax.device_put(problem.X)
        return _scoped(problem, lambda: np.asarray(fn(X)))


def _hessian_trace(problem, quantity):
    """``jit(vmap(hessian))`` then the trace: the plain-JAX Laplacian."""
    if quantity != "laplacian":
        return None
    import jax
    import jax.numpy as jnp

    with _precision_scope(problem):
        f = _jax_apply(problem)
        fn = jax.jit(lambda X: jnp.trace(jax.vmap(jax.hessian(f))(X), axis1=-2, axis2=-1))
        X = jax.device_put(problem.X)
        return _scoped(problem, lambda: np.asarray(fn(X)))


def _scoped(problem, fn):
    def call():
        with _precision_scope(problem):
            return fn()

    return call


IMPLS = [
    Impl("fluxhess", False, _fluxhess_on("jax"), compiles=True, jax_function=True),
    # Julia compiles on first calls too, but FluxHess is precompiled for Dense chains; a first
    # call past --long (the generic route's Hessian) is then timed alone, compilation included.
    Impl("fluxhess julia", False, _fluxhess_on("julia"), backend="julia", any_model=True),
    Impl("julia per-sample loop", False, _julia_per_sample_loop, backend="julia", any_model=True),
    Impl("julia ForwardDiff over Zygote", False, _julia_forward_over_reverse, backend="julia", any_model=True),
    Impl("jax generic route", False, _generic_jax, compiles=True),
    Impl("torch.func", True, _torch_func, "torch", ("torch",)),
    Impl("laplace-torch/ASDL", True, _laplace("Asdl"), "torch", ("laplace", "asdl")),
    Impl("laplace-torch/BackPACK", True, _laplace("BackPack"), "torch", ("laplace", "backpack")),
    Impl("laplace-torch/curvlinops", True, _laplace("Curvlinops"), "torch", ("laplace", "curvlinops")),
    Impl("BackPACK", True, _backpack, "torch", ("backpack",)),
    Impl("ASDL", True, _asdl, "torch", ("asdl",)),
    Impl("curvlinops", True, _curvlinops_kfac, "torch", ("curvlinops",)),
    Impl("folx", True, _folx, needs=("folx",), compiles=True),
    Impl("jit(vmap(hessian))+trace", False, _hessian_trace, compiles=True),
    Impl("jax: hessian / jacrev / vmap(grad)", False, _jax_baseline, compiles=True, jax_function=True),
    Impl("laplax", True, _laplax, needs=("laplax",), compiles=True, jax_function=True),
]
