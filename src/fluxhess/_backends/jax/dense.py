"""A Dense chain's structure and the per-sample factors of its curvature (JAX), for the
structured routes (:mod:`.dense_matrix`, :mod:`.dense_device`, and the diagonal and KFAC
routes). What each curvature kind takes from these factors is in :mod:`.kinds`.

Notation, for one sample and Dense layers ``l = 0 … L-1``: ``a_l`` is the input of layer ``l`` (``ā_l = [a_l; 1]`` when it
has a bias), ``z_l = W_l a_l + b_l`` its pre-activation, ``a_{l+1} = φ_l(z_l)`` with
``φ_l`` the layer's activation followed by the elementwise activation layers up to the
next Dense layer. After the last Dense layer, the *head* ``h`` (its activation and every
layer after it, softmax included) gives the output ``f = h(z_{L-1})``, and
``u(z) = ℓ(h(z), y)``. Per sample:

- ``δ_l = ∂ℓ/∂z_l`` ``(o_l,)``: ``δ_{L-1} = ∇u``, ``δ_l = φ_l' ⊙ (W_{l+1}ᵀ δ_{l+1})``;
- ``K_ll`` ``(o_l, o_l)``, the exact Hessian's curvature with respect to ``z_l``:
  ``D_{L-1} = ∇²u`` and ``D_l = φ_l' W_{l+1}ᵀ D_{l+1} W_{l+1} φ_l' + diag(φ_l'' ⊙ W_{l+1}ᵀ δ_{l+1})``;
- ``J_ml = ∂z_m/∂z_l`` ``(o_m, o_l)`` for ``m > l``, and ``K_ml = K_mm J_ml``;
- for the GGN, ``B_l = ∂f/∂z_l`` ``(C, o_l)`` and ``K_ml = B_mᵀ Λ B_l`` (Λ the loss's Hessian in
  ``f``): ``C·o_l`` numbers per layer, each block's ``K_ml`` made when it is needed;
- ``T̄_ml = ∂ā_m/∂z_l`` ``(n̄_m, o_l)`` for ``m > l`` (zero bias row), exact Hessian only;
  ``diag(φ_l')`` for adjacent layers.

The per-layer factors of a chunk (:func:`factors`) are small; the cross-layer ones are
made one pair of layers at a time (:func:`pair`, :func:`gauss_newton_block`) so that only
one block's are held.

Everything is computed for one sample and batched over a chunk with ``vmap``; the
factor ``s`` of the aggregation is folded in (``K``, ``δ`` of the Hessian's second term)
or, for the empirical Fisher rows, ``√s``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ... import losses as L
from ...model import COLUMNWISE, Activation, Chain, Dense
from .model import compose, dense_weights, elementwise_derivatives


@dataclass(frozen=True)
class Segment:
    """One Dense layer, its block of θ, and the activation layers up to the next Dense layer."""

    layer: Dense
    offset: int
    after: tuple[str, ...]

    @property
    def rows(self) -> int:
        """``n̄``: inputs plus one for the bias."""
        return self.layer.in_features + int(self.layer.bias)

    @property
    def outputs(self) -> int:
        return self.layer.out_features

    @property
    def size(self) -> int:
        return self.layer.num_params

    @property
    def activations(self) -> tuple[str, ...]:
        return (self.layer.activation,) + self.after


@dataclass(frozen=True)
class Structure:
    """A Chain seen as input activations, then Dense segments (the last one carries the head)."""

    before: tuple[str, ...]
    segments: tuple[Segment, ...]


def split(model: Chain) -> Structure | None:
    """The segments of ``model``, or ``None`` when it is not a Dense chain (``model.is_mlp``)
    or a softmax/logsoftmax sits between Dense layers.

    Activations before the first Dense layer only transform the data, and any activation
    after the last one belongs to the head; columnwise activations between Dense layers
    have dense ``φ'`` and ``φ''`` that this route does not cover; ``None`` too for a model that
    is not a Chain (a :class:`fluxhess.JaxFunction` shows no layers).
    """
    if not isinstance(model, Chain) or not model.is_mlp:
        return None
    before, segments, offset = [], [], 0
    for layer in model.layers:
        if isinstance(layer, Dense):
            segments.append([layer, offset, []])
            offset += layer.num_params
        elif isinstance(layer, Activation):
            (segments[-1][2] if segments else before).append(layer.name)
    for layer, _, after in segments[:-1]:
        if any(name in COLUMNWISE for name in after):
            return None
    return Structure(tuple(before), tuple(Segment(l, o, tuple(a)) for l, o, a in segments))


def _forward(st: Structure, theta, x):
    """ā_l, Wᵀ_l, φ_l', φ_l'' for every layer (φ for all but the last), and z_{L-1}."""
    a = compose(st.before)(x)
    abar, w_ts, d1, d2 = [], [], [], []
    for k, seg in enumerate(st.segments):
        w_t, b = dense_weights(seg.layer, theta, seg.offset)
        w_ts.append(w_t)
        abar.append(jnp.concatenate([a, jnp.ones(1, a.dtype)]) if b is not None else a)
        z = a @ w_t if b is None else a @ w_t + b
        if k == len(st.segments) - 1:
            return abar, w_ts, d1, d2, z
        a, g1, g2 = elementwise_derivatives(compose(seg.activations), z)
        d1.append(g1)
        d2.append(g2)
    raise AssertionError("a Structure has at least one segment")


def backward(st: Structure, loss: str, theta, x, y, curvature: bool):
    """ā, Wᵀ, φ' per layer, with δ_l and, with ``curvature`` (the exact Hessian), K_ll from the output down."""
    abar, w_ts, d1, d2, z = _forward(st, theta, x)
    head = compose(st.segments[-1].activations)

    def u(t):
        return L.per_sample(loss, head(t), y)

    n = len(st.segments)
    delta, K = [None] * n, [None] * n
    delta[-1] = jax.grad(u)(z)
    K[-1] = jax.hessian(u)(z) if curvature else None
    for l in reversed(range(n - 1)):
        g = w_ts[l + 1] @ delta[l + 1]  # ∂ℓ/∂a_{l+1}
        delta[l] = d1[l] * g
        if curvature:
            inner = w_ts[l + 1] @ K[l + 1] @ w_ts[l + 1].T
            K[l] = d1[l][:, None] * inner * d1[l][None, :] + jnp.diag(d2[l] * g)
    return abar, w_ts, d1, delta, K


def _pair(st: Structure, m: int, l: int, theta, K_m, d1):
    """The Hessian's ``K_ml = K_mm J_ml`` ``(N, o_m, o_l)`` and, for m > l + 1, ``T̄_ml``.

    Batched over the chunk by hand rather than by ``vmap``, so that every product has a
    weight matrix on one side and becomes one large GEMM:
    ``J_ml = W_m diag(φ_{m-1}') W_{m-1} ⋯ W_{l+1} diag(φ_l')`` and ``T_ml = diag(φ_{m-1}') W_{m-1} ⋯ diag(φ_l')``.
    """
    W = [dense_weights(seg.layer, theta, seg.offset)[0].T for seg in st.segments]  # (o, n)
    K = K_m
    for k in range(m, l, -1):
        N, rows, _ = K.shape
        K = (K.reshape(N * rows, -1) @ W[k]).reshape(N, rows, -1) * d1[k - 1][:, None, :]
    if m == l + 1:  # adjacent layers: T = diag(φ_l'), used as such
        return K, None
    T = W[l + 1][None, :, :] * d1[l][:, None, :]
    for k in range(l + 2, m):
        T = jnp.einsum("ab,nbc->nac", W[k], d1[k - 1][:, :, None] * T)
    T = d1[m - 1][:, :, None] * T
    if st.segments[m].layer.bias:
        T = jnp.concatenate([T, jnp.zeros((T.shape[0], 1, T.shape[2]), T.dtype)], axis=1)
    return K, T


def output_jacobians(st: Structure, loss: str, theta, x, y):
    """ā_l, ``B_l = ∂f/∂z_l`` ``(C, o_l)`` and ``Λ B_l`` for every layer: the GGN's square-root factors.

    ``K_ll = B_lᵀ Λ B_l``, so its diagonal and sum over samples cost ``C·o_l`` per sample
    instead of the ``o_l³`` of the recursion for ``K_ll``.
    """
    abar, w_ts, d1, _, z = _forward(st, theta, x)
    head = compose(st.segments[-1].activations)
    f = head(z)
    lam = jax.hessian(lambda t: L.per_sample(loss, t, y))(f)
    B = [jax.jacfwd(head)(z)]
    for l in reversed(range(len(st.segments) - 1)):
        B.insert(0, (B[0] @ w_ts[l + 1].T) * d1[l][None, :])
    return abar, B, [lam @ b for b in B]


def _diagonal(st, loss, kind, theta, X, Y, s):
    abar, own = jax.vmap(functools.partial(kind.layer_factors, st, loss), (None, 0, 0))(theta, X, Y)
    return [s * ((a * a).T @ kind.own_diagonal(g)).ravel() for a, g in zip(abar, own)]


def _kron(st, loss, kind, theta, X, Y, s):
    abar, own = jax.vmap(functools.partial(kind.layer_factors, st, loss), (None, 0, 0))(theta, X, Y)
    return [a.T @ a for a in abar], [s * kind.own_sum(g) for g in own]


#: How many Dense structures' jitted factors are kept (least recently used dropped first).
STRUCTURES_KEPT = 16


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 8)
def factors(st: Structure, loss: str, kind, part: str):
    """The jitted ``(θ, X, Y, s) ↦`` factors of a chunk of samples for the curvature ``kind``
    (:mod:`.kinds`).

    ``part="matrix"``: per-sample arrays (leading axis N), :meth:`~.kinds.Kind.sample_factors`.
    ``part="diagonal"``: per layer ``s·Σ_n ā_n² ⊗ diag(K_ll,n)`` ``(|θ_l|,)``, summed over the chunk.
    ``part="kron"``: ``([Σ_n ā_n ā_nᵀ], [s·Σ_n K_ll,n])`` summed over the chunk (K_ll = δδᵀ for the EF).
    """
    if part == "matrix":
        return jax.jit(jax.vmap(functools.partial(kind.sample_factors, st, loss), (None, 0, 0, None)))
    return jax.jit(functools.partial(_PART[part], st, loss, kind))


_PART = {"diagonal": _diagonal, "kron": _kron}


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 8)
def pair(st: Structure, m: int, l: int):
    """The Hessian's jitted ``(θ, K_m (N, o_m, o_m), [φ'] (N, ·)) ↦ (K_ml, T̄_ml or None)`` for m > l.

    ``T̄_ml`` ``(N, n̄_m, o_l)`` comes only for non-adjacent layers; for adjacent ones
    ``T_ml = diag(φ_l')`` and the caller uses ``φ_l'`` itself.
    """
    return jax.jit(functools.partial(_pair, st, m, l))


@jax.jit
def gauss_newton_block(B_m, lamB_l):
    """The GGN's ``s·K_ml = B_mᵀ (s·Λ B_l)`` ``(N, o_m, o_l)`` from ``B_m`` ``(N, C, o_m)`` and ``s·Λ B_l`` ``(N, C, o_l)``."""
    return jnp.einsum("ncp,ncq->npq", B_m, lamB_l)


def factor_bytes(st: Structure, problem, kind, part: str) -> int:
    """Working set per sample of ``factors(st, ·, kind, part)`` on ``problem``'s arrays: the
    per-sample factors and XLA's temporaries (four times the factors)."""
    theta, X, Y = problem.params, problem.X, problem.Y
    return 4 * bytes_per_sample(st, problem.loss, kind, part, theta.dtype.name, X.shape[1], Y.shape[1])


@functools.lru_cache(maxsize=STRUCTURES_KEPT * 8)
def bytes_per_sample(st: Structure, loss: str, kind, part: str, dtype: str, d: int, C: int) -> int:
    """Bytes of the per-sample arrays that :func:`factors` holds for each sample of a chunk."""
    P = sum(seg.size for seg in st.segments)
    theta, x, y, s = (jax.ShapeDtypeStruct(shape, dtype) for shape in ((P,), (1, d), (1, C), ()))
    if part == "matrix":
        fn = jax.vmap(functools.partial(kind.sample_factors, st, loss), (None, 0, 0, None))
        shapes = jax.eval_shape(fn, theta, x, y, s)
    else:
        shapes = jax.eval_shape(jax.vmap(functools.partial(kind.layer_factors, st, loss), (None, 0, 0)), theta, x, y)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))
