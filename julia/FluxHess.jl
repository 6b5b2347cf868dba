"""
    FluxHess

Second-order derivatives of Flux models, for the `fluxhess` Python package (and
usable on its own from Julia).

Every entry function takes arrays in **NumPy index order** — `X` is `(N, d)`,
`Y` is `(N, C)`, `V` is `(P, k)` — because that is how juliacall hands a C-ordered
NumPy array over, and returns plain `Array`s in NumPy index order, so Python only
copies. Inside, data is features × batch (`X'` is `d × N`), as Flux expects.

θ is the flat parameter vector of `Flux.destructure(model)` (layers in Chain
order, per Dense layer `vec(W)` then `b`). Its eltype is the model's: build the
model with [`build_model`](@ref) and `T = Float64` for float64 results.

Losses are `Flux.Losses` functions called exactly: `agg = "sum"` passes
`agg = sum`, `agg = "mean"` uses Flux's default `agg = mean`. The batch loss is
`L = s · Σ_n ℓ_n` with `s = 1` for `"sum"`, `1/N` for the (logit)crossentropies
and `1/(N·C)` for `mse` and the (logit)binarycrossentropies under `"mean"`
(Flux averages those over every element of the `C × N` array); every curvature
carries the same `s`.

Second derivatives with respect to θ are ForwardDiff over Zygote, never reverse
over reverse.
"""
module FluxHess

# `gradient` and `kron` are public but not exported: they would clash with
# `Zygote.gradient`/`Flux.gradient` and `LinearAlgebra.kron`. Call them as
# `FluxHess.gradient` and `FluxHess.kron`.
export build_model, parameters, to_spec,
       forward, loss, hessian, ggn, empirical_fisher, hvp, diagonal,
       param_jacobian, input_jacobian, input_hessian, laplacian, divergence

import Flux
import ForwardDiff
import Random
import Zygote
using LinearAlgebra: mul!, tr

const LOSSES = Dict{String,Function}(
    "mse" => Flux.Losses.mse,
    "crossentropy" => Flux.Losses.crossentropy,
    "logitcrossentropy" => Flux.Losses.logitcrossentropy,
    "binarycrossentropy" => Flux.Losses.binarycrossentropy,
    "logitbinarycrossentropy" => Flux.Losses.logitbinarycrossentropy,
)

# Losses that sum over the class dimension before aggregating (Flux's `dims = 1`).
const CATEGORICAL = ("crossentropy", "logitcrossentropy")

#############################################################################
#                                  Models                                   #
#############################################################################

"""
    build_model(source; seed = 0, T = Float64, filename = "model source") -> model

Evaluate Julia `source` (whose last expression is the model, e.g. the text of
Python's `Chain.to_flux()`) in a fresh anonymous module that has `using Flux`,
after `Random.seed!(seed)`; convert it with `f64`/`f32` per `T` (before any
`destructure`, which would otherwise narrow θ silently) and call `testmode!`.
"""
function build_model(source::AbstractString; seed::Integer = 0,
                     T::Type = Float64, filename::AbstractString = "model source")
    sandbox = Module(:FluxHessModel)
    Core.eval(sandbox, :(using Flux))
    Random.seed!(seed)
    model = Base.include_string(sandbox, String(source), String(filename))
    model = if T === Float64
        Flux.f64(model)
    elseif T === Float32
        Flux.f32(model)
    else
        throw(ArgumentError("T must be Float64 or Float32; got $T"))
    end
    Flux.testmode!(model)
    θ, _ = Flux.destructure(model)
    isempty(θ) && throw(ArgumentError(
        "the model has no trainable parameters; got $(summary(model)) from $filename"))
    return model
end

"""
    parameters(model) -> θ::Vector

The flat parameter vector of `Flux.destructure(model)` (a copy).
"""
parameters(model) = copy(first(Flux.destructure(model)))

# θ, the model rebuilder and the eltype; `θ` arrives as any AbstractVector.
function _setup(model, θ::AbstractVector)
    flat, re = Flux.destructure(model)
    length(θ) == length(flat) || throw(DimensionMismatch(
        "θ has length $(length(θ)) but the model has $(length(flat)) parameters"))
    T = eltype(flat)
    return re, Vector{T}(θ), T
end

# (N, d) in NumPy index order → d × N Julia Matrix{T} (never a PyArray inside AD).
_batch(X::AbstractMatrix, ::Type{T}) where {T} = permutedims(Matrix{T}(X))

function _outputs(model, Xt)
    Ŷ = model(Xt)
    Ŷ isa AbstractMatrix || throw(DimensionMismatch(
        "the model must map a d × N batch to a C × N matrix; got $(summary(Ŷ))"))
    return Ŷ
end

function _lossfn(name::AbstractString)
    haskey(LOSSES, name) || throw(ArgumentError(
        "loss must be one of $(join(sort!(collect(keys(LOSSES))), ", ")); got \"$name\""))
    return LOSSES[name]
end

# The batch loss L(Ŷ) with Flux's own aggregation.
function _batchloss(name::AbstractString, agg::AbstractString)
    ℓ = _lossfn(name)
    agg == "sum" && return (Ŷ, Y) -> ℓ(Ŷ, Y; agg = sum)
    agg == "mean" && return (Ŷ, Y) -> ℓ(Ŷ, Y)
    throw(ArgumentError("agg must be \"sum\" or \"mean\"; got \"$agg\""))
end

# The factor s in L = s · Σ_n ℓ_n (see the module docstring).
function _scale(name::AbstractString, agg::AbstractString, N::Integer, C::Integer, ::Type{T}) where {T}
    _lossfn(name)
    agg == "sum" && return one(T)
    agg == "mean" || throw(ArgumentError("agg must be \"sum\" or \"mean\"; got \"$agg\""))
    return name in CATEGORICAL ? one(T) / N : one(T) / (N * C)
end

# Per-sample losses ℓ_n as a vector of length N: the sum of each sample's entries.
_persample(x) = vec(sum(x; dims = 1))

function _check_targets(Ŷ, Yt)
    size(Ŷ) == size(Yt) || throw(DimensionMismatch(
        "the model gives outputs of size $(size(Ŷ)) (C × N) but the targets are $(size(Yt))"))
end

#############################################################################
#                            Forward, loss, gradient                        #
#############################################################################

"""
    forward(model, θ, X) -> (N, C)

The model's outputs for the rows of `X` `(N, d)`.
"""
function forward(model, θ, X)
    re, θ, T = _setup(model, θ)
    return permutedims(_outputs(re(θ), _batch(X, T)))
end

"""
    loss(model, θ, X, Y, lossname, agg) -> L

The Flux loss of the outputs for `X` `(N, d)` against targets `Y` `(N, C)`.
"""
function loss(model, θ, X, Y, lossname, agg)
    re, θ, T = _setup(model, θ)
    Xt, Yt = _batch(X, T), _batch(Y, T)
    L = _batchloss(lossname, agg)
    return L(_outputs(re(θ), Xt), Yt)
end

# θ ↦ L(θ) for the batch, closed over the data.
function _objective(model, θ, X, Y, lossname, agg)
    re, θ, T = _setup(model, θ)
    Xt, Yt = _batch(X, T), _batch(Y, T)
    _check_targets(_outputs(re(θ), Xt), Yt)
    Lŷ = _batchloss(lossname, agg)
    L(ϑ) = Lŷ(re(ϑ)(Xt), Yt)
    return L, θ, T
end

# Zygote.gradient, with `nothing` (no dependence) read as zero.
_gradient(f, θ) = something(Zygote.gradient(f, θ)[1], zero(θ))

"""
    gradient(model, θ, X, Y, lossname, agg) -> (P,)

`∇_θ L` by Zygote. Not exported; call as `FluxHess.gradient`.
"""
function gradient(model, θ, X, Y, lossname, agg)
    L, θ, T = _objective(model, θ, X, Y, lossname, agg)
    return Vector{T}(_gradient(L, θ))
end

#############################################################################
#                                  Hessian                                  #
#############################################################################

"""
    hessian(model, θ, X, Y, lossname, agg) -> (P, P)

`∇²_θ L` by `Zygote.hessian` (ForwardDiff over Zygote, ⌈P/12⌉ gradient passes),
symmetrised as `(H + Hᵀ)/2`.
"""
function hessian(model, θ, X, Y, lossname, agg)
    L, θ, T = _objective(model, θ, X, Y, lossname, agg)
    H = Zygote.hessian(L, θ)
    return Matrix{T}((H .+ transpose(H)) ./ 2)
end

#############################################################################
#                 Per-sample pieces: J_n, Λ_n, g_n (for GGN and EF)          #
#############################################################################

# J_n = ∂f(x_n)/∂θ (C × P) for one sample column `xn` (d × 1), and f(x_n).
function _sample_jacobian(re, θ, xn)
    val, grad = Zygote.withjacobian(ϑ -> re(ϑ)(xn), θ)
    return val, grad[1]
end

# Λ_n = ∇²_ŷ ℓ(ŷ, y_n) (C × C) at ŷ = ŷn, ℓ summed over the sample's entries.
function _output_hessian(ℓ, ŷn::AbstractVector, yn::AbstractVector)
    y = reshape(yn, :, 1)
    return ForwardDiff.hessian(u -> ℓ(reshape(u, :, 1), y; agg = sum), ŷn)
end

# Λ_n for every sample, as a C × C × N array.
function _output_hessians(ℓ, Ŷ::AbstractMatrix{T}, Yt::AbstractMatrix) where {T}
    C, N = size(Ŷ)
    Λ = Array{T}(undef, C, C, N)
    for n in 1:N
        Λ[:, :, n] = _output_hessian(ℓ, Ŷ[:, n], Yt[:, n])
    end
    return Λ
end

# g_n = ∇_θ ℓ_n for every sample, as P × N.
function _sample_gradients(re, θ::AbstractVector{T}, Xt, Yt, ℓ) where {T}
    N = size(Xt, 2)
    Gs = Matrix{T}(undef, length(θ), N)
    for n in 1:N
        xn, yn = Xt[:, n:n], Yt[:, n:n]
        Gs[:, n] = _gradient(ϑ -> ℓ(re(ϑ)(xn), yn; agg = sum), θ)
    end
    return Gs
end

# The data and setup shared by ggn / empirical_fisher / diagonal / kron.
function _curvature_setup(model, θ, X, Y, lossname, agg)
    re, θ, T = _setup(model, θ)
    Xt, Yt = _batch(X, T), _batch(Y, T)
    Ŷ = _outputs(re(θ), Xt)
    _check_targets(Ŷ, Yt)
    C, N = size(Ŷ)
    s = _scale(lossname, agg, N, C, T)
    return (; re, θ, T, Xt, Yt, Ŷ, C, N, s, ℓ = _lossfn(lossname))
end

#############################################################################
#                          Generalized Gauss-Newton                         #
#############################################################################

"""
    ggn(model, θ, X, Y, lossname, agg) -> (P, P)

`s · Σ_n J_nᵀ Λ_n J_n` with `J_n = ∂f(x_n)/∂θ` (a Zygote Jacobian, C pullbacks per
sample) and `Λ_n = ∇²_ŷ ℓ_n` (ForwardDiff).
"""
function ggn(model, θ, X, Y, lossname, agg)
    c = _curvature_setup(model, θ, X, Y, lossname, agg)
    P = length(c.θ)
    G = zeros(c.T, P, P)
    for n in 1:c.N
        ŷn, Jn = _sample_jacobian(c.re, c.θ, c.Xt[:, n:n])
        Λn = _output_hessian(c.ℓ, ŷn, c.Yt[:, n])
        mul!(G, transpose(Jn), Λn * Jn, c.s, one(c.T))
    end
    return (G .+ transpose(G)) ./ 2
end

#############################################################################
#                             Empirical Fisher                              #
#############################################################################

"""
    empirical_fisher(model, θ, X, Y, lossname, agg) -> (P, P)

`s · Σ_n g_n g_nᵀ` with `g_n = ∇_θ ℓ_n` the gradient of sample n's loss (the sum
over its entries), one Zygote gradient per sample.
"""
function empirical_fisher(model, θ, X, Y, lossname, agg)
    c = _curvature_setup(model, θ, X, Y, lossname, agg)
    Gs = _sample_gradients(c.re, c.θ, c.Xt, c.Yt, c.ℓ)
    F = c.s .* (Gs * transpose(Gs))
    return (F .+ transpose(F)) ./ 2
end

#############################################################################
#                       Matrix-free curvature-vector products               #
#############################################################################

"""
    hvp(model, θ, X, Y, V, lossname, agg, kind) -> (P, k)

The product of the curvature `kind` (`"hessian"`, `"ggn"` or `"ef"`) with each
column of `V` `(P, k)`, without forming a P × P matrix:
- `"hessian"`: `ForwardDiff.derivative(t -> Zygote.gradient(L, θ .+ t .* v)[1], 0)`;
- `"ggn"`: `s · Jᵀ(Λ (J v))`, a ForwardDiff JVP, per-sample `Λ_n`, one Zygote pullback;
- `"ef"`: `s · Σ_n g_n (g_nᵀ v)`, a ForwardDiff JVP of the per-sample losses, then
  one Zygote pullback.
"""
function hvp(model, θ, X, Y, V, lossname, agg, kind)
    c = _curvature_setup(model, θ, X, Y, lossname, agg)
    V = Matrix{c.T}(V)
    size(V, 1) == length(c.θ) || throw(DimensionMismatch(
        "V must have $(length(c.θ)) rows (one per parameter); got size $(size(V))"))
    kind == "hessian" && return _hvp_hessian(c, V, lossname, agg)
    kind == "ggn" && return _hvp_ggn(c, V)
    kind == "ef" && return _hvp_ef(c, V)
    throw(ArgumentError("kind must be \"hessian\", \"ggn\" or \"ef\"; got \"$kind\""))
end

function _hvp_hessian(c, V, lossname, agg)
    Lŷ = _batchloss(lossname, agg)
    L = ϑ -> Lŷ(c.re(ϑ)(c.Xt), c.Yt)
    HV = similar(V)
    for j in axes(V, 2)
        v = V[:, j]
        HV[:, j] = ForwardDiff.derivative(t -> _gradient(L, c.θ .+ t .* v), zero(c.T))
    end
    return HV
end

function _hvp_ggn(c, V)
    f = ϑ -> c.re(ϑ)(c.Xt)
    _, back = Zygote.pullback(f, c.θ)
    Λ = _output_hessians(c.ℓ, c.Ŷ, c.Yt)
    GV = similar(V)
    U = similar(c.Ŷ)
    for j in axes(V, 2)
        v = V[:, j]
        Jv = ForwardDiff.derivative(t -> f(c.θ .+ t .* v), zero(c.T))  # C × N
        for n in 1:c.N
            U[:, n] = view(Λ, :, :, n) * view(Jv, :, n)
        end
        GV[:, j] = c.s .* something(back(U)[1], zero(c.θ))
    end
    return GV
end

function _hvp_ef(c, V)
    ℓs = ϑ -> c.ℓ(c.re(ϑ)(c.Xt), c.Yt; agg = _persample)  # (N,) per-sample losses
    _, back = Zygote.pullback(ℓs, c.θ)
    FV = similar(V)
    for j in axes(V, 2)
        v = V[:, j]
        w = ForwardDiff.derivative(t -> ℓs(c.θ .+ t .* v), zero(c.T))  # g_nᵀ v
        FV[:, j] = c.s .* something(back(w)[1], zero(c.θ))
    end
    return FV
end

#############################################################################
#                                 Diagonals                                 #
#############################################################################

"""
    diagonal(model, θ, X, Y, lossname, agg, kind) -> (P,)

The diagonal of the curvature `kind`: `"hessian"` by `Zygote.diaghessian`
(ForwardDiff over Zygote); `"ggn"` as `s · Σ_n diag(J_nᵀ Λ_n J_n)`; `"ef"` as
`s · Σ_n g_n .^ 2`.
"""
function diagonal(model, θ, X, Y, lossname, agg, kind)
    c = _curvature_setup(model, θ, X, Y, lossname, agg)
    if kind == "hessian"
        Lŷ = _batchloss(lossname, agg)
        return Vector{c.T}(Zygote.diaghessian(ϑ -> Lŷ(c.re(ϑ)(c.Xt), c.Yt), c.θ)[1])
    elseif kind == "ggn"
        d = zeros(c.T, length(c.θ))
        for n in 1:c.N
            ŷn, Jn = _sample_jacobian(c.re, c.θ, c.Xt[:, n:n])
            Λn = _output_hessian(c.ℓ, ŷn, c.Yt[:, n])
            d .+= vec(sum(Jn .* (Λn * Jn); dims = 1))
        end
        return c.s .* d
    elseif kind == "ef"
        Gs = _sample_gradients(c.re, c.θ, c.Xt, c.Yt, c.ℓ)
        return c.s .* vec(sum(abs2, Gs; dims = 2))
    end
    throw(ArgumentError("kind must be \"hessian\", \"ggn\" or \"ef\"; got \"$kind\""))
end

#############################################################################
#                      Kronecker factors (KFAC), Dense layers               #
#############################################################################

# The layers of a (possibly nested) Chain, in order, as a Tuple.
_flatlayers(c::Flux.Chain) = foldl((acc, l) -> (acc..., _flatlayers(l)...), c; init = ())
_flatlayers(l) = (l,)

# Run the layers with ε_l added to the pre-activation of the l-th Dense layer.
_perturbed(::Tuple{}, a, εs) = a
function _perturbed(layers::Tuple, a, εs)
    l = first(layers)
    if l isa Flux.Dense
        z = l.weight * a .+ l.bias .+ first(εs)   # Dense: σ.(W * x .+ bias)
        return _perturbed(Base.tail(layers), l.σ.(z), Base.tail(εs))
    end
    return _perturbed(Base.tail(layers), l(a), εs)
end

"""
    kron(model, θ, X, Y, lossname, agg, kind) -> Vector of (A, G)

KFAC factors, one `(A, G)` per Dense layer in Chain order, for a Chain whose other
layers have no parameters. For a layer with input `a_n` and pre-activation `z_n`:
`A = (1/N) Σ_n ā_n ā_nᵀ`, `ā = [a; 1]` with a bias, else `a`;
`kind = "ef"`: `G = s Σ_n δ_n δ_nᵀ`, `δ_n = ∂ℓ_n/∂z_n`;
`kind = "ggn"`: `G = s Σ_n B_nᵀ Λ_n B_n`, `B_n = ∂f(x_n)/∂z_n` (C × out).
`A ⊗ G` approximates the layer's `[vec(W); b]` block (exactly when N == 1).
Not exported; call as `FluxHess.kron`.
"""
function kron(model, θ, X, Y, lossname, agg, kind)
    kind in ("ggn", "ef") || throw(ArgumentError("kind must be \"ggn\" or \"ef\"; got \"$kind\""))
    c = _curvature_setup(model, θ, X, Y, lossname, agg)
    m = c.re(c.θ)
    m isa Flux.Chain || m isa Flux.Dense || throw(ArgumentError(
        "kron needs a Chain of Dense layers and parameter-free functions; got $(summary(m))"))
    layers = _flatlayers(m)
    for (i, l) in enumerate(layers)
        l isa Flux.Dense || isempty(Flux.trainables(l)) || throw(ArgumentError(
            "kron supports Dense layers only; layer $i ($(summary(l))) has parameters"))
    end
    # Inputs a_l of each Dense layer, from a plain forward pass.
    inputs = Matrix{c.T}[]
    a = c.Xt
    for l in layers
        if l isa Flux.Dense
            a isa AbstractMatrix || throw(DimensionMismatch(
                "kron needs matrix inputs to each Dense layer; got $(summary(a))"))
            push!(inputs, a)
        end
        a = l(a)
    end
    dense = filter(l -> l isa Flux.Dense, collect(layers))
    εs = Tuple(zeros(c.T, size(l.weight, 1), c.N) for l in dense)
    Gs = if kind == "ef"
        δs = Zygote.gradient(ε -> c.ℓ(_perturbed(layers, c.Xt, ε), c.Yt; agg = sum), εs)[1]
        [c.s .* (δ * transpose(δ)) for δ in δs]
    else
        _, back = Zygote.pullback(ε -> _perturbed(layers, c.Xt, ε), εs)
        Λ = _output_hessians(c.ℓ, c.Ŷ, c.Yt)
        # B[l][:, :, n] = B_n for layer l (C × out_l).
        B = [zeros(c.T, c.C, size(l.weight, 1), c.N) for l in dense]
        for k in 1:c.C
            seed = zeros(c.T, c.C, c.N)
            seed[k, :] .= 1
            for (l, g) in enumerate(back(seed)[1])
                B[l][k, :, :] = g
            end
        end
        map(B) do Bl
            G = zeros(c.T, size(Bl, 2), size(Bl, 2))
            for n in 1:c.N
                Bn = Bl[:, :, n]
                mul!(G, transpose(Bn), view(Λ, :, :, n) * Bn, c.s, one(c.T))
            end
            (G .+ transpose(G)) ./ 2
        end
    end
    return [begin
                ā = l.bias isa AbstractArray ? vcat(a, ones(c.T, 1, c.N)) : a
                (ā * transpose(ā) ./ c.N, G)
            end for (l, a, G) in zip(dense, inputs, Gs)]
end

#############################################################################
#                          Jacobians and input derivatives                  #
#############################################################################

"""
    param_jacobian(model, θ, X) -> (N, C, P)

`J[n, c, :] = ∂f_c(x_n)/∂θ`, one Zygote Jacobian (C pullbacks) per sample.
"""
function param_jacobian(model, θ, X)
    re, θ, T = _setup(model, θ)
    Xt = _batch(X, T)
    N = size(Xt, 2)
    C = size(_outputs(re(θ), Xt[:, 1:1]), 1)
    J = Array{T}(undef, N, C, length(θ))
    for n in 1:N
        J[n, :, :] = _sample_jacobian(re, θ, Xt[:, n:n])[2]
    end
    return J
end

# x ↦ f(x) for one sample, as a vector of length C (the model sees a d × 1 batch).
_sample_map(m) = x -> vec(m(reshape(x, :, 1)))

"""
    input_jacobian(model, θ, X) -> (N, C, d)

`J[n, c, i] = ∂f_c(x_n)/∂x_i`, by `ForwardDiff.jacobian` per sample.
"""
function input_jacobian(model, θ, X)
    re, θ, T = _setup(model, θ)
    Xt = _batch(X, T)
    f = _sample_map(re(θ))
    d, N = size(Xt)
    C = length(f(Xt[:, 1]))
    J = Array{T}(undef, N, C, d)
    for n in 1:N
        J[n, :, :] = ForwardDiff.jacobian(f, Xt[:, n])
    end
    return J
end

"""
    input_hessian(model, θ, X) -> (N, C, d, d)

`H[n, c, i, j] = ∂²f_c(x_n)/∂x_i∂x_j`, by ForwardDiff over ForwardDiff per sample.
"""
function input_hessian(model, θ, X)
    re, θ, T = _setup(model, θ)
    Xt = _batch(X, T)
    f = _sample_map(re(θ))
    d, N = size(Xt)
    C = length(f(Xt[:, 1]))
    H = Array{T}(undef, N, C, d, d)
    for n in 1:N
        # rows of the outer Jacobian are vec of the inner C × d Jacobian: (c, i)
        Hn = ForwardDiff.jacobian(x -> vec(ForwardDiff.jacobian(f, x)), Xt[:, n])
        H[n, :, :, :] = reshape(Hn, C, d, d)
    end
    return H
end

"""
    laplacian(model, θ, X) -> (N, C)

`Δf_c(x_n) = Σ_i ∂²f_c(x_n)/∂x_i²`, the trace of the input Hessian.
"""
function laplacian(model, θ, X)
    H = input_hessian(model, θ, X)
    N, C, d, _ = size(H)
    return [sum(H[n, c, i, i] for i in 1:d) for n in 1:N, c in 1:C]
end

"""
    divergence(model, θ, X) -> (N,)

`∇·f(x_n) = Σ_i ∂f_i(x_n)/∂x_i`, the trace of the input Jacobian (needs C == d).
"""
function divergence(model, θ, X)
    J = input_jacobian(model, θ, X)
    N, C, d = size(J)
    C == d || throw(DimensionMismatch(
        "divergence needs as many outputs as inputs; the model maps $d inputs to $C outputs"))
    return [tr(J[n, :, :]) for n in 1:N]
end

#############################################################################
#                         Back to the Python layer spec                     #
#############################################################################

# Elementwise activations of the spec, by identity (nameof(sigmoid) is :σ, and
# NNlib's gelu is the same function as gelu_tanh).
const ACTIVATIONS = (
    identity => "identity", Flux.relu => "relu", tanh => "tanh",
    Flux.sigmoid => "sigmoid", Flux.softplus => "softplus", Flux.elu => "elu",
    Flux.leakyrelu => "leakyrelu", Flux.swish => "swish", Flux.gelu => "gelu",
)

function _activation_name(f)
    for (g, name) in ACTIVATIONS
        f === g && return name
    end
    return nothing
end

_isflatten(f) = f === Flux.flatten ||
    (f isa Function && nameof(f) === :flatten && nameof(parentmodule(f)) === :MLUtils)

function _layer_spec(i, l)
    if l isa Flux.Dense
        act = _activation_name(l.σ)
        act === nothing && throw(ArgumentError(
            "layer $i ($l) has activation $(l.σ), which the spec does not have"))
        hasbias = l.bias isa AbstractArray
        return Dict{String,Any}(
            "kind" => "dense", "in" => size(l.weight, 2), "out" => size(l.weight, 1),
            "activation" => act, "bias" => hasbias,
            "weight" => Matrix{Float64}(l.weight),
            "bias_values" => hasbias ? Vector{Float64}(l.bias) : nothing)
    elseif l isa Base.Fix1{typeof(broadcast)}
        act = _activation_name(l.x)
        act === nothing && throw(ArgumentError(
            "layer $i broadcasts $(l.x), which is not a spec activation"))
        return Dict{String,Any}("kind" => "activation", "activation" => act)
    elseif l === Flux.softmax || l === Flux.logsoftmax
        return Dict{String,Any}("kind" => "activation", "activation" => string(nameof(l)))
    elseif _isflatten(l)
        return Dict{String,Any}("kind" => "flatten")
    end
    throw(ArgumentError("layer $i ($(summary(l))) is not a spec layer (Dense, " *
        "Base.Fix1(broadcast, activation), softmax, logsoftmax or Flux.flatten)"))
end

"""
    to_spec(model) -> Vector{Dict{String,Any}}

The layers of a model made only of spec layers, each a Dict with `"kind"`
(`"dense"`, `"activation"` or `"flatten"`); Dense layers also carry `"in"`,
`"out"`, `"activation"`, `"bias"` (a Bool), `"weight"` (out × in) and
`"bias_values"` (or `nothing`). Throws an `ArgumentError` naming the first layer
that is not a spec layer.
"""
to_spec(model) = [_layer_spec(i, l) for (i, l) in enumerate(_flatlayers(model))]

end # module FluxHess
