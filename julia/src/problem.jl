#############################################################################
#                  Kinds, losses, and the Problem of one call               #
#############################################################################

"""The curvature of the batch loss that a quantity approximates: [`Hessian`](@ref), [`GGN`](@ref), [`EmpiricalFisher`](@ref)."""
abstract type Kind end
"""`∇²_θ L`, the exact Hessian."""
struct Hessian <: Kind end
"""`s · Σ_n J_nᵀ Λ_n J_n`, the generalized Gauss-Newton (`J_n = ∂f(x_n)/∂θ`, `Λ_n = ∇²_ŷ ℓ_n`)."""
struct GGN <: Kind end
"""`s · Σ_n g_n g_nᵀ`, the empirical Fisher (`g_n = ∇_θ ℓ_n`)."""
struct EmpiricalFisher <: Kind end

# The Flux losses FluxHess knows the factor s of; those that sum over the class dimension
# before aggregating (Flux's `dims = 1`) average over samples, the others over every entry.
const LOSSES = (Flux.mse, Flux.crossentropy, Flux.logitcrossentropy,
                Flux.binarycrossentropy, Flux.logitbinarycrossentropy)
const CATEGORICAL = (Flux.crossentropy, Flux.logitcrossentropy)

function _check_loss(ℓ)
    any(f -> f === ℓ, LOSSES) || throw(ArgumentError(
        "loss must be one of Flux.mse, Flux.crossentropy, Flux.logitcrossentropy, " *
        "Flux.binarycrossentropy, Flux.logitbinarycrossentropy; got $(repr(ℓ))"))
    return ℓ
end

# The factor s in L = s · Σ_n ℓ_n (see the module docstring), by the aggregation.
_scale(ℓ, ::typeof(sum), N, C, ::Type{T}) where {T} = one(T)
_scale(ℓ, ::typeof(mean), N, C, ::Type{T}) where {T} = any(f -> f === ℓ, CATEGORICAL) ? one(T) / N : one(T) / (N * C)
_scale(ℓ, agg, N, C, ::Type{T}) where {T} = throw(ArgumentError("agg must be sum or mean; got $(repr(agg))"))

"""
    prepare(model, T) -> model

`model` converted with `f64`/`f32` per `T` and put in `testmode!`; an error when it
has no trainable parameters.
"""
function prepare(model, ::Type{T}) where {T}
    model = _with_eltype(model, T)
    Flux.testmode!(model)
    θ, _ = Flux.destructure(model)
    isempty(θ) && throw(ArgumentError(
        "the model has no trainable parameters; got $(summary(model))"))
    return model
end

_with_eltype(model, ::Type{Float64}) = Flux.f64(model)
_with_eltype(model, ::Type{Float32}) = Flux.f32(model)
_with_eltype(model, ::Type{T}) where {T} = throw(ArgumentError("T must be Float64 or Float32; got $T"))

"""
    ModelAt

A model rebuilt at θ: `model` (in test mode, a copy of the caller's), its rebuilder `re`
and θ (`Vector{T}`, the model's eltype).
"""
struct ModelAt{T}
    model::Any
    re::Any
    θ::Vector{T}
end

"""
    model_at(model, θ = nothing) -> ModelAt

`model` rebuilt at θ (`nothing`: its own parameters) and put in test mode; θ must have
the length of `Flux.destructure(model)[1]`.
"""
function model_at(model, θ = nothing)
    flat, re = Flux.destructure(model)
    isempty(flat) && throw(ArgumentError("the model has no trainable parameters; got $(summary(model))"))
    θ = θ === nothing ? flat : θ
    length(θ) == length(flat) || throw(DimensionMismatch(
        "θ has length $(length(θ)) but the model has $(length(flat)) parameters"))
    θ = Vector{eltype(flat)}(θ)
    m = _without_dropout(Flux.testmode!(re(θ)))
    # The rebuilder of the test-mode copy: `re` would rebuild the caller's layers, whose
    # Dropout and BatchNorm are active inside derivatives (for Duals too).
    return ModelAt(m, last(Flux.destructure(m)), θ)
end

# A Dropout in test mode is the identity, and is put as such into the copy: as a layer it
# breaks Zygote over Duals (NNlib's rrule of dropout draws a mask of the input's eltype even
# at p = 0).
_without_dropout(m) = Flux.fmap(l -> l isa Flux.Dropout ? identity : l, m;
                                exclude = l -> l isa Flux.Dropout || Flux.Functors.isleaf(l))

function _outputs(model, X)
    Ŷ = model(X)
    Ŷ isa AbstractMatrix || throw(DimensionMismatch(
        "the model must map a d × N batch to a C × N matrix; got $(summary(Ŷ))"))
    return Ŷ
end

"""
    Problem

One call's data: the model rebuilt at θ, its [`route`](@ref) (found once per call), the
rebuilder `re`, θ, the batch `X` (`d × N`), the targets `Y` (`C × N`), the Flux loss
`ℓ`, its batch form `L(Ŷ, Y)` (`ℓ` with the call's `agg`) and the factor `s`. Built once per call by
[`problem`](@ref); every route takes it. The model, rebuilder and loss are held
untyped, so that the routes compile once per eltype rather than once per architecture
(each use goes through a function barrier).
"""
struct Problem{T}
    model::Any
    route::Any
    re::Any
    θ::Vector{T}
    X::Matrix{T}
    Y::Matrix{T}
    ℓ::Any
    L::Any
    s::T
end

"""
    problem(at::ModelAt, X, Y, ℓ, agg) -> Problem

Checks a call's data: `X` (`d × N`, converted to a `Matrix` of the model's eltype) and
`Y` (`C × N`) against the model's outputs for the first two samples (the shapes; every
route runs the whole batch itself), the loss and `agg`.
"""
function problem(at::ModelAt{T}, X::AbstractMatrix, Y::AbstractMatrix, ℓ, agg) where {T}
    _check_loss(ℓ)
    Xt, Yt = Matrix{T}(X), Matrix{T}(Y)
    r = route(at.model, Xt)
    N = size(Xt, 2)
    n = min(N, 2)
    Ŷ = _outputs(runner(r, at.model), Xt[:, 1:n])
    size(Ŷ, 2) == n || throw(DimensionMismatch(
        "the model must map a d × N batch to a C × N matrix; got $(summary(Ŷ)) for $n samples"))
    C = size(Ŷ, 1)
    size(Yt) == (C, N) || throw(DimensionMismatch(
        "the model gives outputs of size $((C, N)) (C × N) but the targets are $(size(Yt))"))
    s = _scale(ℓ, agg, N, C, T)
    return Problem(at.model, r, at.re, at.θ, Xt, Yt, ℓ, (Ŷ, Y) -> ℓ(Ŷ, Y; agg), s)
end

# θ ↦ L(θ) for the batch.
objective(p::Problem) = ϑ -> p.L(p.re(ϑ)(p.X), p.Y)

# Zygote.gradient, with `nothing` (no dependence) read as zero.
_gradient(f, θ) = something(Zygote.gradient(f, θ)[1], zero(θ))
