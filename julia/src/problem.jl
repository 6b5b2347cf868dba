#############################################################################
#                    Kinds, losses, models and the Problem                  #
#############################################################################

"""The curvature of the batch loss that a quantity approximates."""
abstract type Kind end
"""`∇²_θ L`, the exact Hessian."""
struct Hessian <: Kind end
"""`s · Σ_n J_nᵀ Λ_n J_n`, the generalized Gauss-Newton (`J_n = ∂f(x_n)/∂θ`, `Λ_n = ∇²_ŷ ℓ_n`)."""
struct GGN <: Kind end
"""`s · Σ_n g_n g_nᵀ`, the empirical Fisher (`g_n = ∇_θ ℓ_n`)."""
struct EmpiricalFisher <: Kind end

const LOSSES = Dict{String,Function}(
    "mse" => Flux.Losses.mse,
    "crossentropy" => Flux.Losses.crossentropy,
    "logitcrossentropy" => Flux.Losses.logitcrossentropy,
    "binarycrossentropy" => Flux.Losses.binarycrossentropy,
    "logitbinarycrossentropy" => Flux.Losses.logitbinarycrossentropy,
)

# Losses that sum over the class dimension before aggregating (Flux's `dims = 1`).
const CATEGORICAL = ("crossentropy", "logitcrossentropy")

function _lossfn(name::AbstractString)
    haskey(LOSSES, name) || throw(ArgumentError(
        "loss must be one of $(join(sort!(collect(keys(LOSSES))), ", ")); got \"$name\""))
    return LOSSES[name]
end

function _check_agg(agg::AbstractString)
    agg in ("sum", "mean") || throw(ArgumentError("agg must be \"sum\" or \"mean\"; got \"$agg\""))
    return agg
end

# The factor s in L = s · Σ_n ℓ_n (see the module docstring).
function _scale(name::AbstractString, agg::AbstractString, N::Integer, C::Integer, ::Type{T}) where {T}
    _lossfn(name)
    _check_agg(agg) == "sum" && return one(T)
    return name in CATEGORICAL ? one(T) / N : one(T) / (N * C)
end

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
    return prepare(model, T)
end

"""
    prepare(model, T) -> model

`model` converted with `f64`/`f32` per `T` and put in `testmode!`; an error when it
has no trainable parameters.
"""
function prepare(model, ::Type{T}) where {T}
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
        "the model has no trainable parameters; got $(summary(model))"))
    return model
end

"""
    parameters(model) -> θ::Vector

The flat parameter vector of `Flux.destructure(model)` (a copy).
"""
parameters(model) = copy(first(Flux.destructure(model)))

# (N, d) in NumPy index order → d × N Julia Matrix{T} (never a PyArray inside AD).
_batch(X::AbstractMatrix, ::Type{T}) where {T} = permutedims(Matrix{T}(X))

function _outputs(model, Xt)
    Ŷ = model(Xt)
    Ŷ isa AbstractMatrix || throw(DimensionMismatch(
        "the model must map a d × N batch to a C × N matrix; got $(summary(Ŷ))"))
    return Ŷ
end

"""
    Problem

One call's data: the model rebuilt at θ, the rebuilder `re`, θ, the batch `X`
(`d × N`), the targets `Y` (`C × N`), the Flux loss `ℓ`, its batch form `L(Ŷ, Y)`
and the factor `s`. Built once per call by [`problem`](@ref); every route takes it.
The model, rebuilder and loss are held untyped, so that the routes compile once per
eltype rather than once per architecture (each use goes through a function barrier).
"""
struct Problem{T}
    model::Any
    re::Any
    θ::Vector{T}
    X::Matrix{T}
    Y::Matrix{T}
    ℓ::Any
    L::Any
    s::T
end

_batchloss(ℓ, agg) = agg == "sum" ? ((Ŷ, Y) -> ℓ(Ŷ, Y; agg = sum)) : ((Ŷ, Y) -> ℓ(Ŷ, Y))

# θ, the model rebuilder and the eltype; `θ` arrives as any AbstractVector.
function _setup(model, θ::AbstractVector)
    flat, re = Flux.destructure(model)
    length(θ) == length(flat) || throw(DimensionMismatch(
        "θ has length $(length(θ)) but the model has $(length(flat)) parameters"))
    T = eltype(flat)
    return re, Vector{T}(θ), T
end

"""
    problem(model, θ, X, Y, lossname, agg) -> Problem

Checks and converts a call's arguments (NumPy index order, see the module docstring).
"""
function problem(model, θ, X, Y, lossname::AbstractString, agg::AbstractString)
    re, θ, T = _setup(model, θ)
    ℓ = _lossfn(lossname)
    _check_agg(agg)
    Xt, Yt = _batch(X, T), _batch(Y, T)
    m = re(θ)
    r = route(m)
    Ŷ = _outputs(r isa DenseChain ? r : m, Xt)
    size(Ŷ) == size(Yt) || throw(DimensionMismatch(
        "the model gives outputs of size $(size(Ŷ)) (C × N) but the targets are $(size(Yt))"))
    C, N = size(Ŷ)
    return Problem(m, re, θ, Xt, Yt, ℓ, _batchloss(ℓ, agg), _scale(lossname, agg, N, C, T))
end

# θ ↦ L(θ) for the batch.
objective(p::Problem) = ϑ -> p.L(p.re(ϑ)(p.X), p.Y)

# Zygote.gradient, with `nothing` (no dependence) read as zero.
_gradient(f, θ) = something(Zygote.gradient(f, θ)[1], zero(θ))

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
    p = problem(model, θ, X, Y, lossname, agg)
    return p.L(p.model(p.X), p.Y)
end

"""
    gradient(model, θ, X, Y, lossname, agg) -> (P,)

`∇_θ L`: Dense chains `Σ_n δ_l ā_lᵀ` per layer, other models Zygote. Not exported;
call as `FluxHess.gradient`.
"""
function gradient(model, θ, X, Y, lossname, agg)
    p = problem(model, θ, X, Y, lossname, agg)
    return gradient(route(p.model), p)
end
