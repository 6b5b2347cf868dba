"""A convolutional chain's structure and its per-sample curvature factors (JAX), for the
structured routes of :mod:`.conv_matrix` and :mod:`.conv_kron`.

Every layer with parameters is a *tap*: a Dense layer, or a Conv/CrossCor, linear in its
parameters, ``z = W ⋆ a + b``. Unfolding its input into patches ``U`` ``(S, K)`` (one row per
output position ``s``, ``K = cin ÷ groups × kernel`` columns; a Dense layer has ``S = 1``,
``U = aᵀ``) makes every derivative in θ a product of ``U`` with a derivative in ``z``:
for a per-sample output derivative ``D = ∂(·)/∂z`` ``(O, S)``, the weight part is
``Σ_s D[o, s] U[s, k]`` and the bias part ``Σ_s D[o, s]``. So from one batched forward
pass with a zero ``ε`` added to each ``z`` and one batched backward pass in ``ε``:

- ``δ = ∂ℓ_n/∂z`` gives the per-sample gradients ``g_n`` (the empirical Fisher's rows);
- ``B̃ = L_nᵀ ∂f_n/∂z``, with ``s·Λ_n = L_n L_nᵀ`` (C backward passes at once), gives the
  GGN's rows ``L_nᵀ J_n``, whose Gram matrix is the GGN; with ``L = I`` the rows are
  ``param_jacobian``'s ``J_n``.

The exact Hessian is ``GGN + T`` when every layer is piecewise linear in its input
(:attr:`Structure.second_order_free`: activations ``identity``, ``relu``, ``leakyrelu``,
max and mean pools, inference BatchNorm without affine parameters …), plus, for each tap
whose own activation is curved (tanh, σ, softplus …), that activation's term (the weighted
Gram matrix of the rows of its pre-activation, :func:`curvature_function`). Without those,
``∂²f/∂ε²`` is zero, and the only second-order term left is the one of
``z_m = W_m ⋆ a_m(θ_{<m})`` being bilinear, ``T_{m,<m} = Σ_n Σ_s δ_m[o, s] ∂U_m[s, k]/∂θ_{<m}`` (:func:`cross_function`). Its
``∂a_m/∂θ_l`` is again a derivative in ``z_l`` times tap l's patches: the Jacobian
``∂a_m/∂z_l`` (:func:`pre_activation_jacobian`, derivatives of activations only) times ``U_l``,
batched GEMMs; unfolded by tap m and contracted with ``δ_m`` (:func:`unfolded_against`), one
GEMM (Dense) or weight-gradient convolution (Conv). No per-sample weight gradients are made.

Which layers the route knows is a table on layer classes (:data:`KNOWN`); anything else
(a normalisation with parameters, a Dense layer on N-d samples …) leaves the model to the
generic routes (:func:`split` returns None).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ... import _activations as A
from ... import losses as L
from ...layers import (
    AdaptiveMeanPool, BatchNorm, Conv, CrossCor, Dropout, GlobalMeanPool, LayerNorm, MaxPool, MeanPool, Parallel,
    SkipConnection,
)
from ...model import Activation, Chain, Dense, Flatten
from .layers import APPLY, conv_kernel, dense_weights

Shape = tuple[int, ...]

#: How many structures (and their jitted functions) are kept (least recently used dropped first).
STRUCTURES_KEPT = 16

#: Activations whose second derivative is zero (where it exists): a chain of them and of linear
#: layers is piecewise linear in its pre-activations.
PIECEWISE_LINEAR = frozenset({"identity", "relu", "leakyrelu"})


@dataclass(frozen=True)
class Tap:
    """One layer with parameters: its block of θ, name, and sample shapes in and out."""

    layer: Dense | Conv
    offset: int
    name: str
    in_shape: Shape
    out_shape: Shape

    @property
    def size(self) -> int:
        return self.layer.num_params

    @property
    def weights(self) -> int:
        """``|W|``: the weight block's size (the bias excluded)."""
        return self.size - (self.outputs if self.layer.bias else 0)

    @property
    def positions(self) -> int:
        """``S``: output positions sharing the weight (1 for Dense)."""
        return math.prod(self.out_shape[1:]) if isinstance(self.layer, Conv) else 1

    @property
    def outputs(self) -> int:
        """``O``: output channels (features for Dense)."""
        return self.out_shape[0]

    @property
    def patch_width(self) -> int:
        """``K`` of the unfolded input over all input channels (a grouped Conv uses ``K ÷ groups`` per group)."""
        if isinstance(self.layer, Conv):
            return self.in_shape[0] * math.prod(self.layer.kernel_size)
        return self.in_shape[0]


@dataclass(frozen=True)
class Structure:
    """A Chain as its taps, in θ order; ``curved``: the taps whose own activation is curved (its
    second derivative not zero); ``curved_elsewhere``: a layer other than those activations is
    curved in its input (an activation layer, a curved BatchNorm activation, a LayerNorm)."""

    model: Chain
    taps: tuple[Tap, ...]
    curved: tuple[int, ...]
    curved_elsewhere: bool

    @property
    def second_order_free(self) -> bool:
        """Every layer piecewise linear in its input: the Hessian is ``GGN + T``."""
        return not self.curved and not self.curved_elsewhere

    @property
    def exact_hessian(self) -> bool:
        """Whether the route computes the Hessian: ``GGN + T`` plus each curved tap activation's
        own term (:func:`curvature_function`)."""
        return not self.curved_elsewhere


# ---------------------------------------------------------------------------
# Which layers the route knows: class -> (tap?, piecewise linear?, children)
# ---------------------------------------------------------------------------


def _dense_known(layer: Dense, shape: Shape):
    return len(shape) == 1


#: For each layer class the route knows: whether a layer of it is covered (on samples of
#: ``shape``) and whether it is piecewise linear in its input. Layers with parameters other
#: than the taps (BatchNorm/LayerNorm with affine parameters) are not covered.
KNOWN = {
    Dense: (_dense_known, lambda l: l.activation in PIECEWISE_LINEAR),
    Conv: (lambda l, s: True, lambda l: l.activation in PIECEWISE_LINEAR),
    CrossCor: (lambda l, s: True, lambda l: l.activation in PIECEWISE_LINEAR),
    Activation: (lambda l, s: True, lambda l: l.name in PIECEWISE_LINEAR),
    Flatten: (lambda l, s: True, lambda l: True),
    Dropout: (lambda l, s: True, lambda l: True),
    MeanPool: (lambda l, s: True, lambda l: True),
    MaxPool: (lambda l, s: True, lambda l: True),
    AdaptiveMeanPool: (lambda l, s: True, lambda l: True),
    GlobalMeanPool: (lambda l, s: True, lambda l: True),
    BatchNorm: (lambda l, s: not l.affine, lambda l: l.activation in PIECEWISE_LINEAR),
    LayerNorm: (lambda l, s: not l.affine, lambda l: False),
}

#: The taps: layers linear in their parameters, through their patches.
TAPS = (Dense, Conv, CrossCor)


def _branches(layer) -> tuple[tuple, ...]:
    return _BRANCHES[type(layer)](layer)


_BRANCHES = {SkipConnection: lambda l: ((), l.layers), Parallel: lambda l: l.branches}


@functools.lru_cache(maxsize=STRUCTURES_KEPT)
def split(model: Chain) -> Structure | None:
    """The taps of ``model`` when every layer is one :data:`KNOWN` covers (residual blocks
    included); otherwise None. (A Dense chain takes :func:`.dense.split`'s route first.)"""
    if not isinstance(model, Chain) or model.input_shape is None:
        return None
    names = {b.slice.start: b.name.rsplit(".", 1)[0] for b in model.layout}
    taps: list[Tap] = []
    curved: list[int] = []
    try:
        pl, _, _ = _walk(model.layers, tuple(model.input_shape), 0, names, taps, curved)
    except _Unknown:
        return None
    return Structure(model, tuple(taps), tuple(curved), not pl)


class _Unknown(Exception):
    """A layer the route does not cover."""


def _walk(layers, shape: Shape, offset: int, names: dict, taps: list, curved: list):
    """``(every layer but the taps' activations piecewise linear, output shape, offset after)`` of
    ``layers`` on samples of ``shape``, appending their taps, and to ``curved`` those whose
    activation is curved."""
    pl = True
    for layer in layers:
        if type(layer) in _BRANCHES:
            for branch in _branches(layer):
                branch_pl, _, offset = _walk(branch, shape, offset, names, taps, curved)
                pl = pl and branch_pl
            shape = layer.output_shape(shape)
            continue
        entry = KNOWN.get(type(layer))
        if entry is None or not entry[0](layer, shape):
            raise _Unknown
        out = layer.output_shape(shape)
        if isinstance(layer, TAPS):
            taps.append(Tap(layer, offset, names[offset], shape, out))
            if not entry[1](layer):
                curved.append(len(taps) - 1)
        elif layer.num_params:
            raise _Unknown
        else:
            pl = pl and entry[1](layer)
        shape, offset = out, offset + layer.num_params
    return pl, shape, offset


# ---------------------------------------------------------------------------
# The network with a zero ε added to each tap's pre-activation, and the taps' inputs
# ---------------------------------------------------------------------------


def _tapped(layer, theta, offset, a, eps, eta):
    """``σ(z + ε) + η`` with ``z`` the layer's affine part on the batch ``a``."""
    z = _affine(layer, theta, offset, a)
    if eps is not None:
        z = z + eps
    out = A.ELEMENTWISE[layer.activation](z)
    return out if eta is None else out + eta


def _affine(layer, theta, offset, a):
    """``z = W ⋆ a + b`` of a tap on the batch ``a``."""
    if isinstance(layer, Conv):
        w, b = conv_kernel(layer, theta, offset)
        z = lax.conv_general_dilated(
            a, w, window_strides=layer.stride, padding=layer.pads, rhs_dilation=layer.dilation,
            feature_group_count=layer.groups,
        )
        if b is not None:
            z = z + b.reshape((1, -1) + (1,) * (z.ndim - 2))
    else:
        w_t, b = dense_weights(layer, theta, offset)
        z = a @ w_t if b is None else a @ w_t + b
    return z


def _run(layers, theta, offset, a, eps, eta, inputs):
    for layer in layers:
        if type(layer) in _BRANCHES:
            total = None
            for branch in _branches(layer):
                out, offset = _run(branch, theta, offset, a, eps, eta, inputs)
                total = out if total is None else total + out
            a = total
            continue
        if isinstance(layer, TAPS):
            k = len(inputs)
            inputs.append(a)
            a = _tapped(layer, theta, offset, a, None if eps is None else eps[k], None if eta is None else eta[k])
        else:
            a = APPLY[type(layer)](layer, theta, offset, a)
        offset += layer.num_params
    return a, offset


def run(st: Structure, theta, X, eps=None, eta=None):
    """``(f(θ, X) (n, C), [a_m (n, *in_shape)])`` on a batch of flattened samples ``X`` ``(n, d)``,
    with ``eps[m]`` ``(n, *out_shape)`` added to tap m's pre-activation and ``eta[m]`` to its
    activation's output."""
    inputs: list = []
    out, _ = _run(st.model.layers, theta, 0, X.reshape((-1, *st.model.input_shape)), eps, eta, inputs)
    return out, inputs


def patches(tap: Tap, a):
    """``U`` ``(n, K, S)``: the tap's input ``a`` ``(n, *in_shape)`` unfolded, in the order
    ``(channel, *kernel)`` of ``lax``'s OIHW kernel (Dense: ``(n, in, 1)``), as
    ``lax.conv_general_dilated_patches`` gives it: one strided slice of the padded input per
    kernel offset (that function is a convolution with a one-hot kernel, ``K`` times the flops
    of the copy; 6.3 → ~1 ms for a 3×3 16-channel layer on 500 samples 4×4)."""
    layer = tap.layer
    if not isinstance(layer, Conv):
        return a[:, :, None]
    padded = jnp.pad(a, [(0, 0), (0, 0), *layer.pads])
    spatial = tap.out_shape[1:]
    windows = [
        padded[(slice(None), slice(None), *(
            slice(o * d, o * d + s * (size - 1) + 1, s)
            for o, d, s, size in zip(offset, layer.dilation, layer.stride, spatial)
        ))]
        for offset in itertools.product(*(range(k) for k in layer.kernel_size))
    ]
    U = jnp.stack(windows, axis=2)  # (n, c, |kernel|, *spatial)
    return U.reshape(U.shape[0], U.shape[1] * U.shape[2], -1)


def theta_order(tap: Tap, W):
    """The weight part ``W`` ``(..., O, K)`` (over all input channels, ``lax``'s kernel order)
    as the layer's weight block of θ ``(..., |W|)``: a grouped Conv keeps each output's own
    group of channels, a true convolution flips its kernel back, Dense is ``vec(W)`` (input-major)."""
    layer = tap.layer
    lead = W.shape[:-2]
    if not isinstance(layer, Conv):
        return jnp.swapaxes(W, -1, -2).reshape(*lead, -1)
    g, O, cin, k = layer.groups, layer.out_channels, layer.in_channels, layer.kernel_size
    if g > 1:
        W = W.reshape(*lead, g, O // g, g, (cin // g) * math.prod(k))
        W = jnp.moveaxis(jnp.diagonal(W, axis1=-4, axis2=-2), -1, -3)  # (..., g, O/g, K/g)
    W = W.reshape(*lead, O, cin // g, *k)
    if layer.flips_kernel:
        W = jnp.flip(W, axis=tuple(range(W.ndim - len(k), W.ndim)))
    return W.reshape(*lead, -1)


def tap_parts(tap: Tap, U, D):
    """``∂(·)/∂θ_tap`` from ``U`` ``(n, K, S)`` and ``D = ∂(·)/∂z`` ``(r, n, O, S)``, as its
    weight part ``(n, r, |W|)`` and, with a bias, its bias part ``(n, r, O)``."""
    parts = [theta_order(tap, jnp.einsum("rnos,nks->nrok", D, U))]
    if tap.layer.bias:
        parts.append(jnp.einsum("rnos->nro", D))
    return parts


def tap_rows(tap: Tap, U, D):
    """``∂(·)/∂θ_tap`` ``(n, r, |θ_tap|)``: :func:`tap_parts` side by side."""
    return jnp.concatenate(tap_parts(tap, U, D), axis=-1)


def _flat(tap: Tap, d):
    """A derivative in ``z`` ``(..., n, *out_shape)`` as ``(..., n, O, S)``."""
    return d.reshape(*d.shape[: d.ndim - len(tap.out_shape)], tap.outputs, tap.positions)


def _backward(st: Structure, loss: str, theta, X, Y):
    """``U`` per tap, the vjp in ε, the output ``f`` and Λ ``(n, C, C)``."""
    eps = [jnp.zeros((X.shape[0], *t.out_shape), theta.dtype) for t in st.taps]
    f, vjp, inputs = jax.vjp(lambda e: run(st, theta, X, e), eps, has_aux=True)
    U = [patches(t, a) for t, a in zip(st.taps, inputs)]
    lam = jax.vmap(jax.hessian(lambda yhat, y: L.per_sample(loss, yhat, y)))(f, Y) if loss else None
    return U, vjp, f, lam


def _rows(st: Structure, U, D):
    """``(n, r, P)`` from the per-tap ``D`` ``(r, n, *out_shape)``."""
    return jnp.concatenate([tap_rows(t, u, _flat(t, d)) for t, u, d in zip(st.taps, U, D)], axis=-1)


def output_rows(st: Structure, loss, theta, X, Y, root):
    """Per tap ``U`` and ``B̃ = Rᵀ ∂f/∂z`` ``(r, n, *out_shape)`` with ``R`` ``(n, C, r)`` from ``root(Λ)``."""
    U, vjp, f, lam = _backward(st, loss, theta, X, Y)
    D = jax.vmap(lambda r: vjp(r)[0], 2)(root(lam, f))  # per tap (r, n, ...)
    return U, D


def gradients_in_z(st: Structure, loss, theta, X, Y):
    """Per tap ``U`` and ``δ = ∂ℓ_n/∂z`` ``(n, *out_shape)``."""
    U, vjp, f, _ = _backward(st, loss, theta, X, Y)
    g = jax.vmap(jax.grad(lambda yhat, y: L.per_sample(loss, yhat, y)))(f, Y)
    return U, vjp(g)[0]


def loss_root(s):
    """``R`` with ``R Rᵀ = s·Λ_n`` per sample (Λ is positive semi-definite: rounding clipped)."""

    def root(lam, f):
        w, Q = jnp.linalg.eigh(lam)
        return Q * jnp.sqrt(jnp.clip(s * w, 0.0, None))[:, None, :]

    return root


def identity_root(lam, f):
    """``R = I`` ``(n, C, C)``: the rows are the Jacobian's."""
    return jnp.broadcast_to(jnp.eye(f.shape[1], dtype=f.dtype), (f.shape[0], f.shape[1], f.shape[1]))


# ---------------------------------------------------------------------------
# Jitted per-chunk functions
# ---------------------------------------------------------------------------

def _ggn_rows(st, loss, theta, X, Y, s):
    U, D = output_rows(st, loss, theta, X, Y, loss_root(s))
    rows = _rows(st, U, D)
    return rows.reshape(-1, rows.shape[-1])


def _ggn_factored_rows(st, factored, loss, theta, X, Y, s):
    """The GGN's rows ``(n·r, P)`` and, for each tap of ``factored`` (one output position),
    ``ā`` ``(n, K̄)`` (``[a; 1]`` with a bias) and ``E`` ``(n, O, end)``:
    ``E[n, o] = Σ_r D[r, n, o] · row_{n,r}[:end]`` up to the tap's last parameter, so that the
    tap's rows of the Gram matrix are ``Σ_n ā[n] ⊗ E[n]`` (:func:`.conv_matrix.matrix`)."""
    U, D = output_rows(st, loss, theta, X, Y, loss_root(s))
    rows = _rows(st, U, D)  # (n, r, P)
    factors = []
    for m in factored:
        tap, u, d = st.taps[m], U[m][..., 0], _flat(st.taps[m], D[m])[..., 0]  # (n, K), (r, n, O)
        abar = jnp.concatenate([u, jnp.ones((u.shape[0], 1), u.dtype)], axis=1) if tap.layer.bias else u
        factors.append((abar, jnp.einsum("rno,nrc->noc", d, rows[:, :, : tap.offset + tap.size])))
    return rows.reshape(-1, rows.shape[-1]), factors


def _ef_rows(st, loss, theta, X, Y, s):
    U, delta = gradients_in_z(st, loss, theta, X, Y)
    return jnp.sqrt(s) * _rows(st, U, [d[None] for d in delta])[:, 0, :]


def _jacobian(st, theta, X):
    U, D = output_rows(st, None, theta, X, None, identity_root)
    return _rows(st, U, D)


def tap_squares(tap: Tap, U, D):
    """``Σ_r Σ_n`` of the squares of :func:`tap_rows` ``(|θ_tap|,)``, summed before the weight part
    is put in θ's order (no per-sample rows in θ's order are made)."""
    W = jnp.einsum("rnos,nks->nrok", D, U)  # samples leading: XLA's batched GEMMs ~2× faster than (r, n, …)
    parts = [theta_order(tap, jnp.sum(W * W, axis=(0, 1)))]
    if tap.layer.bias:
        parts.append(jnp.sum(D.sum(-1) ** 2, axis=(0, 1)))
    return jnp.concatenate(parts)


def _ggn_diagonal(st, loss, theta, X, Y, s):
    U, D = output_rows(st, loss, theta, X, Y, loss_root(s))
    return jnp.concatenate([tap_squares(t, u, _flat(t, d)) for t, u, d in zip(st.taps, U, D)])


def _ef_diagonal(st, loss, theta, X, Y, s):
    U, delta = gradients_in_z(st, loss, theta, X, Y)
    return s * jnp.concatenate([tap_squares(t, u, _flat(t, d[None])) for t, u, d in zip(st.taps, U, delta)])


#: The per-chunk functions of each kind: ``rows`` (``U`` of ``M = Uᵀ U`` for the chunk's
#: samples, ``(rows, P)``) and ``diagonal`` (``Σ`` of their squares, ``(P,)``).
_CHUNK = {
    ("ggn", "rows"): _ggn_rows,
    ("ef", "rows"): _ef_rows,
    ("ggn", "diagonal"): _ggn_diagonal,
    ("ef", "diagonal"): _ef_diagonal,
}


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 4)
def chunk_function(st: Structure, loss: str, kind: str, part: str):
    """The jitted ``(θ, X, Y, s) ↦`` ``part`` of ``kind`` (``"ggn"`` or ``"ef"``) on a chunk of samples."""
    return jax.jit(functools.partial(_CHUNK[kind, part], st, loss))


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 2)
def factored_rows_function(st: Structure, loss: str, factored: tuple[int, ...]):
    """The jitted ``(θ, X, Y, s) ↦`` :func:`_ggn_factored_rows` of a chunk of samples."""
    return jax.jit(functools.partial(_ggn_factored_rows, st, factored, loss))


@functools.lru_cache(maxsize=STRUCTURES_KEPT)
def jacobian_function(st: Structure):
    """The jitted ``(θ, X) ↦ ∂f/∂θ`` ``(n, C, P)``."""
    return jax.jit(functools.partial(_jacobian, st))


def _in_reverse(st: Structure, m: int, of_z: bool = False) -> bool:
    """Whether :func:`pre_activation_jacobian` for tap m takes reverse mode: one pullback per entry
    of a sample of the tap's input (``of_z``: of its pre-activation), when there are no more of
    them than of the earlier pre-activations (one pushforward each otherwise)."""
    shape = st.taps[m].out_shape if of_z else st.taps[m].in_shape
    return math.prod(shape) <= sum(math.prod(t.out_shape) for t in st.taps[:m])


def pre_activation_jacobian(st: Structure, m: int, theta, X, of_z: bool = False):
    """``∂a_m/∂z_l`` (``of_z``: ``∂z_m/∂z_l``) of each sample for every tap ``l < m``, per tap
    ``(r, n, O_l, S_l)`` with ``r = |a_m|`` (``|z_m|``; the entries of a sample of tap m's
    input or pre-activation, flattened).

    Derivatives in the pre-activations only (no weight gradients): the pullbacks of the ``r``
    unit cotangents of a sample, or the pushforwards of the ``Σ_l |z_l|`` unit tangents
    (:func:`_in_reverse`), each carried by all samples of the batch at once, as the samples do not mix."""
    tap, earlier, n = st.taps[m], st.taps[:m], X.shape[0]
    later = [jnp.zeros((n, *t.out_shape), theta.dtype) for t in st.taps[m:]]
    eps = [jnp.zeros((n, *t.out_shape), theta.dtype) for t in earlier]
    shape = tap.out_shape if of_z else tap.in_shape

    def a_m(eps):
        a = run(st, theta, X, list(eps) + later)[1][m]
        return _affine(tap.layer, theta, tap.offset, a) if of_z else a

    r, sizes = math.prod(shape), [math.prod(t.out_shape) for t in earlier]
    cuts = list(itertools.accumulate(sizes))[:-1]
    if _in_reverse(st, m, of_z):
        _, vjp = jax.vjp(a_m, eps)
        units = jnp.eye(r, dtype=theta.dtype).reshape(r, 1, *shape)
        D = jax.vmap(lambda u: vjp(jnp.broadcast_to(u, (n, *shape)))[0])(units)  # per tap (r, n, *out_l)
        D = [d.reshape(r, n, -1) for d in D]
    else:
        _, jvp = jax.linearize(a_m, eps)

        def push(unit):  # (Σ_l |z_l|,) -> (n, *shape)
            parts = jnp.split(unit, cuts)
            return jvp([jnp.broadcast_to(u.reshape(t.out_shape), (n, *t.out_shape)) for t, u in zip(earlier, parts)])

        Ja = jax.vmap(push)(jnp.eye(sum(sizes), dtype=theta.dtype)).reshape(-1, n, r)  # (Σ_l |z_l|, n, r)
        D = jnp.split(jnp.swapaxes(Ja, 0, 2), cuts, axis=-1)  # per tap (r, n, |z_l|)
    return [d.reshape(r, n, t.outputs, t.positions) for t, d in zip(earlier, D)]


def unfolded_against(tap: Tap, J, delta):
    """``Σ_n Σ_s δ[n, o, s] U(J[n, :, p])[k, s]`` ``(O, K, p)``: the columns ``J`` ``(n, |a|, p)`` of
    derivatives of the tap's input, unfolded by the tap (:func:`patches`) and contracted with
    ``δ`` ``(n, O, S)`` over samples and positions. For a Conv this is the weight gradient of a
    convolution of all ``p·cin`` channels (no patches are made); a Dense tap is one GEMM, whose
    natural layout ``(O, K, p)`` this is (XLA's other layouts cost a pass over the result each)."""
    layer = tap.layer
    if not isinstance(layer, Conv):
        return jnp.einsum("no,nkp->okp", delta[..., 0], J)
    n, p = J.shape[0], J.shape[-1]
    cin, spatial = tap.in_shape[0], tap.in_shape[1:]
    images = jnp.moveaxis(J.reshape(n, cin, -1, p), -1, 1).reshape(n, p * cin, *spatial)

    def convolve(w):
        return lax.conv_general_dilated(
            images, w, window_strides=layer.stride, padding=layer.pads, rhs_dilation=layer.dilation
        )

    w = jnp.zeros((tap.outputs, p * cin, *layer.kernel_size), J.dtype)
    _, vjp = jax.vjp(convolve, w)
    (W,) = vjp(delta.reshape(n, tap.outputs, *tap.out_shape[1:]))  # (O, p·cin, *kernel)
    return jnp.swapaxes(W.reshape(tap.outputs, p, tap.patch_width), 1, 2)


def _cross(st: Structure, m: int, loss: str, theta, X, Y, s):
    """``T_{m,<m}`` ``(off, |W_m|)``: ``s·Σ_n Σ_s δ_m[o, s] ∂U_m[s, k]/∂θ_{<m}`` for one chunk.

    ``∂a_m/∂θ_l`` is :func:`tap_parts` of tap l's patches with ``∂a_m/∂z_l``
    (:func:`pre_activation_jacobian`): batched GEMMs over the positions of ``z_l``; it is then
    unfolded by tap m and contracted with ``δ_m`` (:func:`unfolded_against`), one part of θ at a time."""
    tap = st.taps[m]
    U, delta = gradients_in_z(st, loss, theta, X, Y)
    delta = s * _flat(tap, delta[m])
    D = pre_activation_jacobian(st, m, theta, X)
    T = [
        unfolded_against(tap, part, delta)
        for t, u, d in zip(st.taps[:m], U, D) for part in tap_parts(t, u, d)
    ]
    return theta_order(tap, jnp.moveaxis(jnp.concatenate(T, axis=-1), -1, 0))


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 4)
def cross_function(st: Structure, loss: str, m: int):
    """The jitted ``(θ, X, Y, s) ↦ T_{m,<m}`` of one chunk (:func:`_cross`)."""
    return jax.jit(functools.partial(_cross, st, m, loss))


def cross_bytes_per_sample(st: Structure, m: int, itemsize: int) -> int:
    """Bytes per sample of :func:`_cross`'s arrays: the pass that makes ``∂a_m/∂z_{<m}``, which
    carries one copy of the earlier layers' activations per unit (co)tangent, that Jacobian (and
    its transpose in forward mode), the earlier taps' patches, and ``∂a_m/∂θ_{<m}`` (and, for a
    Conv tap, its copy as images). Measured (the peak RSS of one chunk of 50 and 100 samples
    of benchmarks/problems.py's CNN): 0.7× this for its Conv tap, 0.8–0.9× for its Dense tap."""
    tap = st.taps[m]
    off, width = tap.offset, math.prod(tap.in_shape)
    earlier = sum(math.prod(t.out_shape) for t in st.taps[:m])
    activations = sum(math.prod(t.in_shape) + 2 * math.prod(t.out_shape) for t in st.taps[:m])
    patches_before = sum(t.patch_width * t.positions for t in st.taps[:m])
    copies = (1 + (not _in_reverse(st, m)), 1 + isinstance(tap.layer, Conv))
    floats = min(width, earlier) * activations + width * (copies[0] * earlier + copies[1] * off) + patches_before
    return itemsize * floats


def rows_bytes_per_sample(st: Structure, rows: int, itemsize: int) -> int:
    """Bytes per sample of the per-chunk row functions: the rows ``(r, P)``, the patches and the
    ``r`` derivatives in z (four times, for XLA's temporaries)."""
    P = st.model.num_params
    floats = rows * P + sum(t.patch_width * t.positions + (rows + 2) * math.prod(t.out_shape) for t in st.taps)
    floats += 3 * max(math.prod(t.in_shape) for t in st.taps)
    return 4 * itemsize * floats


# ---------------------------------------------------------------------------
# A curved tap activation's own second-order term
# ---------------------------------------------------------------------------
#
# A tap m whose activation σ is curved adds to the Hessian
#
#     Σ_n Σ_i w_{n,i} ρ_{n,i} ρ_{n,i}ᵀ,   ρ_{n,i} = ∂z_m[n, i]/∂θ,   w = s·g ⊙ σ''(z_m),
#
# g = ∂ℓ_n/∂σ(z_m) the gradient at the activation's output: the Gram matrix of the rows of
# z_m, weighted by entry (of either sign). They are nonzero in θ_{≤m} only: in θ_{<m} the
# earlier taps' parts of ∂z_m/∂z_l (:func:`pre_activation_jacobian`), in θ_m entry (o, s)'s
# patch U[:, s] in output o's weights and a 1 on its bias, so θ_m's block is block diagonal
# by output. The julia backend's twin is `_add_curvature_term!` (julia/src/conv.jl).


def _curved_weights(st: Structure, m: int, loss: str, theta, X, Y, s):
    """``w = s·g ⊙ σ''(z_m)`` ``(n, O, S)`` of tap m, and the tap's input ``(n, *in_shape)``."""
    tap = st.taps[m]
    eta = [jnp.zeros((X.shape[0], *t.out_shape), theta.dtype) for t in st.taps]
    f, vjp, inputs = jax.vjp(lambda e: run(st, theta, X, None, e), eta, has_aux=True)
    g = vjp(jax.vmap(jax.grad(lambda yhat, y: L.per_sample(loss, yhat, y)))(f, Y))[0][m]
    z = _affine(tap.layer, theta, tap.offset, inputs[m])
    second = jnp.vectorize(jax.grad(jax.grad(A.ELEMENTWISE[tap.layer.activation])))
    return _flat(tap, s * g * second(z)), inputs[m]


def _earlier_rows(st: Structure, m: int, theta, X):
    """``∂z_m/∂θ_{<m}`` ``(n, O, S, P_{<m})``: :func:`tap_parts` of each earlier tap's patches with
    ``∂z_m/∂z_l``."""
    tap = st.taps[m]
    D = pre_activation_jacobian(st, m, theta, X, of_z=True)
    _, inputs = run(st, theta, X)
    parts = [part for t, a, d in zip(st.taps[:m], inputs, D) for part in tap_parts(t, patches(t, a), d)]
    return jnp.concatenate(parts, axis=-1).reshape(X.shape[0], tap.outputs, tap.positions, -1)


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 4)
def _weight_positions(tap: Tap) -> np.ndarray:
    """``(O, K)``: the position in θ_tap of the weight of output o on patch entry k (``lax``'s
    kernel order over all input channels), ``tap.size`` (none) where a grouped Conv's output
    does not see that channel."""
    O, K = tap.outputs, tap.patch_width
    with jax.ensure_compile_time_eval():
        order = np.asarray(theta_order(tap, jnp.arange(O * K).reshape(O, K)))  # θ position -> o·K + k
    at = np.full(O * K, tap.size, dtype=np.int64)
    at[order] = np.arange(order.size)
    return at.reshape(O, K)


def _own_block(tap: Tap, w, U):
    """θ_m's block ``(|θ_m|, |θ_m|)`` of the weighted Gram matrix: per output o, ``Σ w U[:, s] U[:, s]ᵀ``
    on its weights, ``Σ w U[:, s]`` against its bias and ``Σ w`` on the bias."""
    at, size = _weight_positions(tap), tap.size
    M = jnp.zeros((size, size), w.dtype)
    M = M.at[at[:, :, None], at[:, None, :]].add(jnp.einsum("nos,nks,njs->okj", w, U, U), mode="drop")
    if tap.layer.bias:
        bias = (tap.weights + np.arange(tap.outputs))[:, None]
        wU = jnp.einsum("nos,nks->ok", w, U)
        M = M.at[bias, at].add(wU, mode="drop").at[at, bias].add(wU, mode="drop")
        M = M.at[bias[:, 0], bias[:, 0]].add(jnp.einsum("nos->o", w))
    return M


def _own_against(tap: Tap, wR, U):
    """θ_m's rows against the columns of ``wR`` ``(n, O, S, q)``: ``(|θ_m|, q)``, the weights'
    ``Σ_n Σ_s U[k, s] wR[o, s]`` in θ order, then the bias's ``Σ_n Σ_s wR[o, s]``."""
    parts = [theta_order(tap, jnp.moveaxis(jnp.einsum("nosq,nks->okq", wR, U), -1, 0)).T]
    if tap.layer.bias:
        parts.append(jnp.einsum("nosq->oq", wR))
    return jnp.concatenate(parts, axis=0)


def _curvature(st: Structure, m: int, loss: str, theta, X, Y, s):
    """Tap m's curved activation's term on a chunk of samples: the ``(P_{≤m}, P_{≤m})`` block of
    θ_{≤m}, exactly symmetric."""
    tap = st.taps[m]
    w, a = _curved_weights(st, m, loss, theta, X, Y, s)
    U = patches(tap, a)
    block = _own_block(tap, w, U)
    if tap.offset:
        R = _earlier_rows(st, m, theta, X)
        wR = w[..., None] * R
        cross = _own_against(tap, wR, U)
        block = jnp.block([[jnp.einsum("nosp,nosq->pq", wR, R), cross.T], [cross, block]])
    return (block + block.T) / 2


def _curvature_diagonal(st: Structure, m: int, loss: str, theta, X, Y, s):
    """The diagonal ``(P_{≤m},)`` of :func:`_curvature`."""
    tap = st.taps[m]
    w, a = _curved_weights(st, m, loss, theta, X, Y, s)
    U = patches(tap, a)
    parts = [theta_order(tap, jnp.einsum("nos,nks->ok", w, U * U))]
    if tap.layer.bias:
        parts.append(jnp.einsum("nos->o", w))
    if tap.offset:
        parts.insert(0, jnp.einsum("nosp,nos->p", _earlier_rows(st, m, theta, X) ** 2, w))
    return jnp.concatenate(parts)


_CURVATURE = {"matrix": _curvature, "diagonal": _curvature_diagonal}


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 4)
def curvature_function(st: Structure, loss: str, m: int, part: str):
    """The jitted ``(θ, X, Y, s) ↦`` tap m's curved activation's term on one chunk: its
    ``"matrix"`` (:func:`_curvature`) or ``"diagonal"``."""
    return jax.jit(functools.partial(_CURVATURE[part], st, m, loss))


def curvature_bytes_per_sample(st: Structure, m: int, itemsize: int) -> int:
    """Bytes per sample of :func:`_curvature`'s arrays: the forward and backward pass for ``w``, the
    pass that makes ``∂z_m/∂z_{<m}`` (as :func:`cross_bytes_per_sample`'s), the rows ``R`` of
    θ_{<m} with ``wR`` and their squares, and the patches of every tap up to m (twice)."""
    tap = st.taps[m]
    off, width = tap.offset, math.prod(tap.out_shape)
    earlier = sum(math.prod(t.out_shape) for t in st.taps[:m])
    activations = sum(math.prod(t.in_shape) + 2 * math.prod(t.out_shape) for t in st.taps[:m])
    passes = sum(math.prod(t.in_shape) + 4 * math.prod(t.out_shape) for t in st.taps)
    patches_upto = 2 * sum(t.patch_width * t.positions for t in st.taps[: m + 1])
    floats = passes + min(width, earlier) * activations + width * (2 * earlier + 3 * off) + patches_upto
    return itemsize * floats
