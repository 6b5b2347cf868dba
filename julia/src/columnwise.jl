#############################################################################
#             Per-sample Jacobians of batched maps, by seeded Duals          #
#############################################################################

# Directions per forward pass (ForwardDiff's default chunk threshold).
const CHUNK = 12

# The Dual width for k directions: one of a few, so that precompiled code serves every
# small k (a width of its own would compile anew); unused directions are seeded zero.
_width(k) = k <= 1 ? 1 : k <= 4 ? 4 : CHUNK

"""
    columnwise_jacobian(g, Z) -> (m, k, n)

`J[:, :, j] = ∂g(Z)[:, j] / ∂Z[:, j]` for a map `g` from `k × n` to `m × n` whose
column `j` depends on column `j` of its input alone (a model or loss applied to a
batch of samples). All columns are seeded at once: ⌈k / 12⌉ forward passes of
the whole batch, whatever `n`. `Z` may itself hold Duals (nested derivatives):
each call tags its own.
"""
function columnwise_jacobian(g, Z::AbstractMatrix{V}) where {V<:Real}
    return _columnwise_jacobian(g, Z, Val(_width(size(Z, 1))))
end

function _columnwise_jacobian(g, Z::AbstractMatrix{V}, ::Val{w}) where {V,w}
    k, n = size(Z)
    tag = ForwardDiff.Tag(g, V)
    D = ForwardDiff.Dual{typeof(tag),V,w}
    J = nothing
    Zd = Matrix{D}(undef, k, n)
    for c0 in 1:w:k
        for j in 1:n, i in 1:k
            Zd[i, j] = D(Z[i, j], ForwardDiff.Partials{w,V}(ntuple(t -> V(c0 + t - 1 == i), Val(w))))
        end
        out = g(Zd)
        out isa AbstractMatrix && size(out, 2) == n || throw(DimensionMismatch(
            "a batch of $n samples must give $n columns; got $(summary(out))"))
        if J === nothing
            J = Array{V}(undef, size(out, 1), k, n)
        end
        for j in 1:n, t in 1:min(w, k - c0 + 1), r in axes(out, 1)
            J[r, c0 + t - 1, j] = ForwardDiff.partials(typeof(tag), out[r, j], t)
        end
    end
    return J
end

"""
    columnwise_gradient(u, Z) -> (k, n)

`∇_{Z[:, j]} u_j` for every column, where `u(Z)` is the `1 × n` row of per-column
scalars `u_j(Z[:, j])` (a loss with `agg = _columns`): forward mode, no Zygote, so
that nothing is generated at run time.
"""
columnwise_gradient(u, Z::AbstractMatrix) = dropdims(columnwise_jacobian(u, Z); dims = 1)

"""
    columnwise_hessian(u, Z) -> (k, k, n)

`∇²_{Z[:, j]} u_j` for every column (`u` as for [`columnwise_gradient`](@ref)):
ForwardDiff over ForwardDiff, `k` directions each.
"""
columnwise_hessian(u, Z::AbstractMatrix) = columnwise_jacobian(W -> columnwise_gradient(u, W), Z)

# A loss's `agg` that keeps one value per sample: the `1 × n` row of per-sample losses.
_columns(x) = sum(x; dims = 1)

"""
    directional_second(g, X, E) -> d²/dt² g(X + t E) at t = 0

Batched second directional derivative: for a columnwise `g`, column `j` is the
second derivative of sample `j`'s outputs along `E[:, j]`.
"""
function directional_second(g, X::AbstractMatrix{T}, E::AbstractMatrix) where {T}
    return ForwardDiff.derivative(
        t -> ForwardDiff.derivative(u -> g(X .+ (t + u) .* E), zero(t)), zero(T))
end
