#############################################################################
#       The quantities on a Problem, dispatching on the kind and the route  #
#############################################################################

# `curvature_into!(H, kind, route, p, workspace)`, `diagonal_of(kind, route, p)`,
# `kron_of(kind, route, p)` and `gradient_of(route, p)` have one method per route in
# structured.jl, conv.jl and generic.jl.

# KFAC factors exist for the GGN and the empirical Fisher only.
kron_of(::Hessian, r, p::Problem) = throw(ArgumentError(
    "KFAC has no Hessian factors; kind must be GGN() or EmpiricalFisher()"))

# J[n, c, :] = ∂f_c(x_n)/∂θ for all samples at once, (N, C, P).
param_jacobian_of(dc::DenseChain, at::ModelAt, X) = _param_jacobian(dc, X)
param_jacobian_of(r::Generic, at::ModelAt, X) = _param_jacobian(r, at.model, at.re, at.θ, X)

#############################################################################
#                       Matrix-free curvature-vector products               #
#############################################################################

# The products of a kind's curvature with the columns of V (P × k), one column at a time:
# - Hessian: `ForwardDiff.derivative(t -> Zygote.gradient(L, θ .+ t .* v)[1], 0)`;
# - GGN: `s · Jᵀ(Λ (J v))`, a ForwardDiff JVP, per-sample `Λ_n`, one Zygote pullback;
# - EmpiricalFisher: `s · Σ_n g_n (g_nᵀ v)`, a ForwardDiff JVP of the per-sample losses,
#   then one Zygote pullback.
# Each column takes its own pullback: Zygote keeps the cotangents of a mutable layer's
# fields (BatchNorm's γ and β) in the pullback's context, so a second call of one pullback
# adds the first call's cotangent to its own (Zygote's `lib.jl`: "captured mutables +
# multiple calls to `back`").
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
    Ŷ = f(p.θ)
    Λ = columnwise_hessian(G -> p.ℓ(G, p.Y; agg = _columns), Ŷ)
    GV = similar(V)
    U = similar(Ŷ)
    for j in axes(V, 2)
        v = V[:, j]
        Jv = ForwardDiff.derivative(t -> f(p.θ .+ t .* v), zero(T))  # C × N
        for n in axes(U, 2)
            U[:, n] = view(Λ, :, :, n) * view(Jv, :, n)
        end
        _, back = Zygote.pullback(f, p.θ)
        GV[:, j] = p.s .* something(back(U)[1], zero(p.θ))
    end
    return GV
end

# Per-sample losses ℓ_n as a vector of length N: the sum of each sample's entries.
_persample(x) = vec(sum(x; dims = 1))

function _hvp(::EmpiricalFisher, p::Problem{T}, V) where {T}
    ℓs = ϑ -> p.ℓ(p.re(ϑ)(p.X), p.Y; agg = _persample)  # (N,) per-sample losses
    FV = similar(V)
    for j in axes(V, 2)
        v = V[:, j]
        w = ForwardDiff.derivative(t -> ℓs(p.θ .+ t .* v), zero(T))  # g_nᵀ v
        _, back = Zygote.pullback(ℓs, p.θ)
        FV[:, j] = p.s .* something(back(w)[1], zero(p.θ))
    end
    return FV
end
