#############################################################################
#             Derivatives with respect to the inputs, batched               #
#############################################################################
#
# Each takes what runs the batch (`runner(route(m), m)`: a Dense chain's type-erased
# layers or the model) and `X` (`d × N`), and returns features first, samples last.

# `J[c, i, n] = ∂f_c(x_n)/∂x_i`: all samples at once, ⌈d/12⌉ forward passes, (C, d, N).
input_jacobian_of(m, X) = columnwise_jacobian(m, X)

# `H[c, i, j, n] = ∂²f_c(x_n)/∂x_i∂x_j`, ForwardDiff over ForwardDiff on the whole batch, (C, d, d, N).
function input_hessian_of(m, X)
    d, N = size(X)
    H = columnwise_jacobian(Z -> reshape(columnwise_jacobian(m, Z), :, size(Z, 2)), X)
    return reshape(H, :, d, d, N)
end

# `Δf_c(x_n) = Σ_i ∂²f_c(x_n)/∂x_i²`, (C, N). Dense chains with elementwise functions
# only: the forward Laplacian (value, Jacobian and Laplacian pushed through the layers
# together); other models: the sum of `d` batched second directional derivatives.
laplacian_of(m, X::Matrix) = _directional_laplacian(m, X)

function _directional_laplacian(m, X::Matrix{T}) where {T}
    d = size(X, 1)
    E = zeros(T, size(X))
    local Δ
    for i in 1:d
        E[i, :] .= one(T)
        part = directional_second(m, X, E)
        Δ = i == 1 ? part : Δ .+ part
        E[i, :] .= zero(T)
    end
    return Δ
end

# The forward Laplacian runs on Dense chains whose input goes straight to the first
# Dense layer (the layers before it only reshape d × N back to itself, as an
# InputShape and a flatten do) and whose head is elementwise.
function _forward_laplacian_applies(dc::DenseChain, d::Integer)
    probe = reshape(collect(1.0:2d), d, 2)
    return isempty(dc.head.tail) && _tryapply(x -> _inputs(dc, x), probe) == probe
end

# A Dense chain: the forward Laplacian, in chunks of samples (~6 MiB of Jacobians each).
function laplacian_of(dc::DenseChain, X::Matrix{T}) where {T}
    d, N = size(X)
    _forward_laplacian_applies(dc, d) || return _directional_laplacian(dc, X)
    width = maximum(size(W, 1) for W in dc.weights)
    n = clamp((6 * 2^20) ÷ (sizeof(T) * d * max(width, d)), 1, N)   # ~6 MiB of Jacobians
    return reduce(hcat, [_forward_laplacian(dc, X[:, a:min(a + n - 1, N)]) for a in 1:n:N])
end

# (value, ∂/∂x, Δ) through z = W a + b, then an elementwise φ.
function _forward_laplacian(dc::DenseChain, X::Matrix{T}) where {T}
    d, n = size(X)
    a, Δ = X, zeros(T, d, n)
    J = zeros(T, d, d, n)
    for j in 1:n, i in 1:d
        J[i, i, j] = one(T)
    end
    for l in _layers(dc)
        W = dc.weights[l]
        Jz = reshape(W * reshape(J, size(J, 1), d * n), :, d, n)
        φ = l == length(dc.weights) ? dc.head.σ : dc.φ[l]
        a, d1, d2 = _elementwise_derivatives(φ, _preactivation(dc, l, a), true)
        Δ = d1 .* (W * Δ) .+ d2 .* dropdims(sum(abs2, Jz; dims = 2); dims = 2)
        J = reshape(d1, size(d1, 1), 1, n) .* Jz
    end
    return Δ
end

# `∇·f(x_n) = Σ_i ∂f_i(x_n)/∂x_i`, the trace of the input Jacobian (needs C == d), (N,).
function divergence_of(m, X)
    J = input_jacobian_of(m, X)
    C, d, N = size(J)
    C == d || throw(DimensionMismatch(
        "divergence needs as many outputs as inputs; the model maps $d inputs to $C outputs"))
    return [tr(view(J, :, :, n)) for n in 1:N]
end
