#############################################################################
#           The public quantities: one problem, a kind, a route             #
#############################################################################

_kind(kind::Kind) = kind
_kind(kind) = throw(ArgumentError(
    "kind must be FluxHess.Hessian(), FluxHess.GGN() or FluxHess.EmpiricalFisher(); got $(repr(kind))"))

"""
    curvature(kind, model, θ, X, Y, lossname, agg) -> (P, P)

The curvature `kind` of the batch loss, exactly symmetric, by the model's [`route`](@ref).
"""
function curvature(kind, model, θ, X, Y, lossname, agg)
    p = problem(model, θ, X, Y, lossname, agg)
    P = length(p.θ)
    return curvature!(Matrix{eltype(p.θ)}(undef, P, P), _kind(kind), route(p.model), p)
end

"""
    curvature!(out, kind, model, θ, X, Y, lossname, agg) -> out

[`curvature`](@ref) written into `out`, a `P × P` array of the model's eltype over
contiguous memory in either order (the result is symmetric): from Python, a NumPy array
that then needs no copy.
"""
function curvature!(out::AbstractMatrix, kind, model, θ, X, Y, lossname, agg)
    p = problem(model, θ, X, Y, lossname, agg)
    T, P = eltype(p.θ), length(p.θ)
    size(out) == (P, P) && eltype(out) === T || throw(DimensionMismatch(
        "out must be a $P × $P array of $T; got $(summary(out))"))
    strides(out) in ((1, P), (P, 1)) || throw(ArgumentError(
        "out must be contiguous (C or Fortran order); got strides $(strides(out))"))
    GC.@preserve out begin
        H = unsafe_wrap(Array, pointer(out), (P, P))
        curvature!(H, _kind(kind), route(p.model), p)
    end
    return out
end

curvature(kind::Kind, r, p::Problem{T}) where {T} =
    curvature!(Matrix{T}(undef, length(p.θ), length(p.θ)), kind, r, p)

"""
    hessian(model, θ, X, Y, lossname, agg) -> (P, P)

`∇²_θ L`. Dense chains: `Σ_n ā_m ā_lᵀ ⊗ ∂δ_m/∂z_l` plus the cross term, block by
block; other models: ForwardDiff over Zygote (⌈P/12⌉ gradient passes of the batch).
"""
hessian(model, θ, X, Y, lossname, agg) = curvature(Hessian(), model, θ, X, Y, lossname, agg)

"""
    ggn(model, θ, X, Y, lossname, agg) -> (P, P)

`s · Σ_n J_nᵀ Λ_n J_n` with `J_n = ∂f(x_n)/∂θ` and `Λ_n = ∇²_ŷ ℓ_n`.
"""
ggn(model, θ, X, Y, lossname, agg) = curvature(GGN(), model, θ, X, Y, lossname, agg)

"""
    empirical_fisher(model, θ, X, Y, lossname, agg) -> (P, P)

`s · Σ_n g_n g_nᵀ` with `g_n = ∇_θ ℓ_n` the gradient of sample n's loss (the sum
over its entries).
"""
empirical_fisher(model, θ, X, Y, lossname, agg) =
    curvature(EmpiricalFisher(), model, θ, X, Y, lossname, agg)

"""
    diagonal(model, θ, X, Y, lossname, agg, kind) -> (P,)

The diagonal of the curvature `kind`, without the P × P matrix.
"""
function diagonal(model, θ, X, Y, lossname, agg, kind)
    p = problem(model, θ, X, Y, lossname, agg)
    return diagonal(_kind(kind), route(p.model), p)
end

"""
    kron(model, θ, X, Y, lossname, agg, kind) -> Vector of (A, G)

KFAC factors, one `(A, G)` per Dense layer in Chain order, for a Chain whose other
layers have no parameters. For a layer with input `a_n` and pre-activation `z_n`:
`A = (1/N) Σ_n ā_n ā_nᵀ`, `ā = [a; 1]` with a bias, else `a`;
`kind = EmpiricalFisher()`: `G = s Σ_n δ_n δ_nᵀ`, `δ_n = ∂ℓ_n/∂z_n`;
`kind = GGN()`: `G = s Σ_n B_nᵀ Λ_n B_n`, `B_n = ∂f(x_n)/∂z_n` (C × out).
`A ⊗ G` approximates the layer's `[vec(W); b]` block (exactly when N == 1).
Not exported; call as `FluxHess.kron`.
"""
function kron(model, θ, X, Y, lossname, agg, kind)
    _kind(kind) isa Hessian && throw(ArgumentError(
        "kron has no Hessian(); kind must be FluxHess.GGN() or FluxHess.EmpiricalFisher()"))
    p = problem(model, θ, X, Y, lossname, agg)
    return kron(kind, route(p.model), p)
end

"""
    param_jacobian(model, θ, X) -> (N, C, P)

`J[n, c, :] = ∂f_c(x_n)/∂θ`, for all samples at once.
"""
function param_jacobian(model, θ, X)
    re, θ, T = _setup(model, θ)
    Xt = _batch(X, T)
    m = re(θ)
    r = route(m)
    return r isa DenseChain ? _param_jacobian(r, Xt) : _param_jacobian(r, m, re, θ, Xt)
end

#############################################################################
#                       Matrix-free curvature-vector products               #
#############################################################################

"""
    hvp(model, θ, X, Y, V, lossname, agg, kind) -> (P, k)

The product of the curvature `kind` with each column of `V` `(P, k)`, without
forming a P × P matrix:
- `Hessian()`: `ForwardDiff.derivative(t -> Zygote.gradient(L, θ .+ t .* v)[1], 0)`;
- `GGN()`: `s · Jᵀ(Λ (J v))`, a ForwardDiff JVP, per-sample `Λ_n`, one Zygote pullback;
- `EmpiricalFisher()`: `s · Σ_n g_n (g_nᵀ v)`, a ForwardDiff JVP of the per-sample
  losses, then one Zygote pullback.
"""
function hvp(model, θ, X, Y, V, lossname, agg, kind)
    p = problem(model, θ, X, Y, lossname, agg)
    T = eltype(p.θ)
    V = Matrix{T}(V)
    size(V, 1) == length(p.θ) || throw(DimensionMismatch(
        "V must have $(length(p.θ)) rows (one per parameter); got size $(size(V))"))
    return _hvp(_kind(kind), p, V)
end

function _hvp(::Hessian, p::Problem{T}, V) where {T}
    L = objective(p)
    HV = similar(V)
    for j in axes(V, 2)
        v = V[:, j]
        HV[:, j] = ForwardDiff.derivative(t -> _gradient(L, p.θ .+ t .* v), zero(T))
    end
    return HV
end

function _hvp(::GGN, p::Problem{T}, V) where {T}
    f = ϑ -> p.re(ϑ)(p.X)
    Ŷ, back = Zygote.pullback(f, p.θ)
    Λ = columnwise_hessian(G -> p.ℓ(G, p.Y; agg = _columns), Ŷ)
    GV = similar(V)
    U = similar(Ŷ)
    for j in axes(V, 2)
        v = V[:, j]
        Jv = ForwardDiff.derivative(t -> f(p.θ .+ t .* v), zero(T))  # C × N
        for n in axes(U, 2)
            U[:, n] = view(Λ, :, :, n) * view(Jv, :, n)
        end
        GV[:, j] = p.s .* something(back(U)[1], zero(p.θ))
    end
    return GV
end

# Per-sample losses ℓ_n as a vector of length N: the sum of each sample's entries.
_persample(x) = vec(sum(x; dims = 1))

function _hvp(::EmpiricalFisher, p::Problem{T}, V) where {T}
    ℓs = ϑ -> p.ℓ(p.re(ϑ)(p.X), p.Y; agg = _persample)  # (N,) per-sample losses
    _, back = Zygote.pullback(ℓs, p.θ)
    FV = similar(V)
    for j in axes(V, 2)
        v = V[:, j]
        w = ForwardDiff.derivative(t -> ℓs(p.θ .+ t .* v), zero(T))  # g_nᵀ v
        FV[:, j] = p.s .* something(back(w)[1], zero(p.θ))
    end
    return FV
end
