#############################################################################
#        The public functions: features × batch, Flux losses, keywords      #
#############################################################################

# X is d × N, or an array whose last dimension is the batch: then the model is fed its
# samples in that shape from the d × N matrix of their columns (see `InputShape`).
_batched(model, X::AbstractMatrix) = model, X
_batched(model, X::AbstractArray) = with_input_shape(model, size(X)[1:end-1]), reshape(X, :, size(X, ndims(X)))
_batched(model, X::AbstractVector) = throw(DimensionMismatch(
    "X must be features × batch (a matrix, or an array whose last dimension is the batch); " *
    "got a vector of length $(length(X)): for one sample pass reshape(x, :, 1)"))

# Y is C × N, or a vector of N targets of a model with one output.
_targets(Y::AbstractMatrix) = Y
_targets(Y::AbstractVector) = reshape(Y, 1, :)

function _problem(model, X, Y, loss, agg, params)
    m, Xm = _batched(model, X)
    return problem(model_at(m, params), Xm, _targets(Y), loss, agg)
end

# What runs the batch of a call without a loss, and the batch as a d × N Matrix.
function _runner(model, X, params)
    m, Xm = _batched(model, X)
    at = model_at(m, params)
    return runner(route(at.model), at.model), Matrix{eltype(at.θ)}(Xm)
end

# `out` (P × P, the model's eltype, contiguous in either order) as the Matrix the routes
# write into, panel by panel.
function _into!(out::AbstractMatrix, kind::Kind, p::Problem{T}, workspace::Integer) where {T}
    P = length(p.θ)
    size(out) == (P, P) && eltype(out) === T || throw(DimensionMismatch(
        "out must be a $P × $P array of $T; got $(summary(out))"))
    strides(out) in ((1, P), (P, 1)) || throw(ArgumentError(
        "out must be contiguous (C or Fortran order); got strides $(strides(out))"))
    workspace > 0 || throw(ArgumentError("workspace must be a positive number of bytes; got $workspace"))
    GC.@preserve out begin
        H = unsafe_wrap(Array, pointer(out), (P, P))
        curvature_into!(H, kind, p.route, p, workspace)
    end
    return out
end

function _products(kind::Kind, p::Problem{T}, V::AbstractVecOrMat) where {T}
    size(V, 1) == length(p.θ) || throw(DimensionMismatch(
        "V must have $(length(p.θ)) rows (one per parameter); got size $(size(V))"))
    HV = _hvp(kind, p, Matrix{T}(reshape(V, size(V, 1), :)))
    return V isa AbstractVector ? vec(HV) : HV
end

"""
    curvature(kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing, workspace = FluxHess.WORKSPACE) -> Matrix

The curvature `kind` ([`Hessian`](@ref), [`GGN`](@ref) or [`EmpiricalFisher`](@ref)) of
the batch loss `L = agg(loss(model(X), Y))` with respect to the model's parameters θ
(`Flux.destructure(model)[1]`), as a `P × P` matrix of the model's eltype, exactly
symmetric.

- `X`: `d × N` (or an array whose last dimension is the batch); `Y`: `C × N` (or a
  vector when `C == 1`);
- `loss`: `Flux.mse`, `Flux.crossentropy`, `Flux.logitcrossentropy`,
  `Flux.binarycrossentropy` or `Flux.logitbinarycrossentropy`; `agg`: `mean` or `sum`;
- `params`: θ to use instead of the model's own (a vector of length P);
- `workspace`: bytes of working memory beside the result.

Throws `ArgumentError` for another loss or `agg`, `DimensionMismatch` when `Y` does not
match the model's outputs or `params` has the wrong length.

```julia
model = f64(Chain(Dense(3 => 4, tanh), Dense(4 => 2)))
X, Y = randn(3, 10), randn(2, 10)
curvature(GGN(), model, X, Y; agg = sum) ≈ curvature(GGN(), model, X, Y) * 20   # mean: 1/(N·C)
```
"""
function curvature(kind::Kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing,
                   workspace::Integer = WORKSPACE)
    p = _problem(model, X, Y, loss, agg, params)
    P = length(p.θ)
    return _into!(Matrix{eltype(p.θ)}(undef, P, P), kind, p, workspace)
end

"""
    curvature!(out, kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing, workspace = FluxHess.WORKSPACE) -> out

[`curvature`](@ref) written into `out`, a `P × P` array of the model's eltype over
contiguous memory in either order (the result is symmetric): a memory-mapped array
receives it panel by panel, with `workspace` bytes of working memory beside it.
"""
function curvature!(out::AbstractMatrix, kind::Kind, model, X, Y; loss = Flux.mse, agg = mean,
                    params = nothing, workspace::Integer = WORKSPACE)
    return _into!(out, kind, _problem(model, X, Y, loss, agg, params), workspace)
end

"""
    FluxHess.hessian(model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> (P, P)

`∇²_θ L`: [`curvature`](@ref) with `Hessian()`. Dense chains: `Σ_n ā_m ā_lᵀ ⊗ ∂δ_m/∂z_l`
plus the cross term, block by block; other models: ForwardDiff over Zygote, layer by
layer for a Chain (the Duals of a layer's columns pass through it and the layers after
it only). Not exported (`Zygote.hessian` has the name).
"""
hessian(model, X, Y; kw...) = curvature(Hessian(), model, X, Y; kw...)

"""
    FluxHess.ggn(model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> (P, P)

`s · Σ_n J_nᵀ Λ_n J_n` with `J_n = ∂f(x_n)/∂θ` and `Λ_n = ∇²_ŷ ℓ_n`: [`curvature`](@ref) with `GGN()`.
"""
ggn(model, X, Y; kw...) = curvature(GGN(), model, X, Y; kw...)

"""
    FluxHess.empirical_fisher(model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> (P, P)

`s · Σ_n g_n g_nᵀ` with `g_n = ∇_θ ℓ_n` the gradient of sample n's loss (the sum over
its entries): [`curvature`](@ref) with `EmpiricalFisher()`.
"""
empirical_fisher(model, X, Y; kw...) = curvature(EmpiricalFisher(), model, X, Y; kw...)

"""
    FluxHess.gradient(model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> (P,)

`∇_θ L` as a flat vector in θ's order: Dense chains `Σ_n δ_l ā_lᵀ` per layer, other
models Zygote. Not exported (`Flux.gradient` has the name).
"""
function gradient(model, X, Y; loss = Flux.mse, agg = mean, params = nothing)
    p = _problem(model, X, Y, loss, agg, params)
    return gradient_of(p.route, p)
end

"""
    hvp(kind, model, X, Y, V; loss = Flux.mse, agg = mean, params = nothing) -> (P, k) or (P,)

The product of the curvature `kind` with each column of `V` (`P × k`, or a vector),
without forming the `P × P` matrix: forward mode over one reverse pass per column.
"""
function hvp(kind::Kind, model, X, Y, V::AbstractVecOrMat; loss = Flux.mse, agg = mean, params = nothing)
    return _products(kind, _problem(model, X, Y, loss, agg, params), V)
end

"""
    diagonal(kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> (P,)

The diagonal of the curvature `kind`, without the `P × P` matrix.
"""
function diagonal(kind::Kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing)
    p = _problem(model, X, Y, loss, agg, params)
    return diagonal_of(kind, p.route, p)
end

"""
    FluxHess.kron(kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing) -> Vector of (A, G)

KFAC factors, one `(A, G)` per Dense, Conv or CrossCor layer in Chain order, for a
Chain whose other layers have no parameters; `kind` is `GGN()` or `EmpiricalFisher()`
(an `ArgumentError` for `Hessian()`, or for a grouped convolution). For a layer with
input `a_n` and pre-activation `z_n`:
`A = (1/N) Σ_n ā_n ā_nᵀ`, `ā = [a; 1]` with a bias, else `a`;
`EmpiricalFisher()`: `G = s Σ_n δ_n δ_nᵀ`, `δ_n = ∂ℓ_n/∂z_n`;
`GGN()`: `G = s Σ_n B_nᵀ Λ_n B_n`, `B_n = ∂f(x_n)/∂z_n` (C × out).
`LinearAlgebra.kron(A, G)` approximates the layer's `[vec(W); b]` block (exactly when
N == 1). A Conv or CrossCor layer follows the KFC "expand" convention: `ā` is the
patch of the input at each of the `S` output positions (`(k…, cin)` in the kernel's
own order, then 1 for a bias), `A = (1/(N·S)) Σ_n Σ_s ā ā ᵀ`, and `G` sums over the
positions too; the weight block (output channel slowest in θ) is `≈ kron(G, A)`.
Not exported (`LinearAlgebra.kron` has the name).
"""
function kron(kind::Kind, model, X, Y; loss = Flux.mse, agg = mean, params = nothing)
    p = _problem(model, X, Y, loss, agg, params)
    return kron_of(kind, p.route, p)
end

"""
    param_jacobian(model, X; params = nothing) -> (C, P, N)

`J[c, :, n] = ∂f_c(x_n)/∂θ`, for all samples at once.
"""
function param_jacobian(model, X; params = nothing)
    m, Xm = _batched(model, X)
    at = model_at(m, params)
    Xt = Matrix{eltype(at.θ)}(Xm)
    J = param_jacobian_of(route(at.model, Xt), at, Xt)    # (N, C, P)
    return permutedims(J, (2, 3, 1))
end

"""
    input_jacobian(model, X; params = nothing) -> (C, d, N)

`J[c, i, n] = ∂f_c(x_n)/∂x_i` (each sample flattened to its `d` entries): all samples at
once, ⌈d/12⌉ forward passes.
"""
input_jacobian(model, X; params = nothing) = input_jacobian_of(_runner(model, X, params)...)

"""
    input_hessian(model, X; params = nothing) -> (C, d, d, N)

`H[c, i, j, n] = ∂²f_c(x_n)/∂x_i∂x_j`, ForwardDiff over ForwardDiff on the whole batch.
"""
input_hessian(model, X; params = nothing) = input_hessian_of(_runner(model, X, params)...)

"""
    laplacian(model, X; params = nothing) -> (C, N)

`Δf_c(x_n) = Σ_i ∂²f_c(x_n)/∂x_i²`. Dense chains with elementwise functions only: the
forward Laplacian; other models: the sum of `d` batched second directional derivatives.
"""
laplacian(model, X; params = nothing) = laplacian_of(_runner(model, X, params)...)

"""
    divergence(model, X; params = nothing) -> (N,)

`∇·f(x_n) = Σ_i ∂f_i(x_n)/∂x_i`, the trace of the input Jacobian; a `DimensionMismatch`
unless the model has as many outputs as inputs.
"""
divergence(model, X; params = nothing) = divergence_of(_runner(model, X, params)...)
