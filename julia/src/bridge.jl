#############################################################################
#         FluxHess.Bridge: NumPy's conventions, for the Python package      #
#############################################################################

"""
    FluxHess.Bridge

What the Python package `fluxhess` calls through juliacall: the same quantities in
NumPy's conventions. Arrays arrive in NumPy index order (`X` `(N, d)`, `Y` `(N, C)`, `V`
`(P, k)`): Python hands its C-ordered arrays over as [`numpy_view`](@ref)s of their
memory, and any other `AbstractArray` works too (a strided `PyArray` included). Results
leave as plain `Array`s in NumPy index order, so that Python only copies; θ is always given; the loss and `agg` come by name (`"mse"`, …;
`"sum"`, `"mean"`); the kind comes last. Each function checks, converts and calls the
Julia API's internals once.
"""
module Bridge

using ..FluxHess: FluxHess, Flux, Random, Kind, Hessian, GGN, EmpiricalFisher,
                  ModelAt, model_at, prepare, route, runner, _outputs, _into!, _products,
                  gradient_of, diagonal_of, kron_of, param_jacobian_of, input_jacobian_of,
                  input_hessian_of, laplacian_of, divergence_of,
                  layout, to_spec, with_spec_layernorms, sublayers, with_input_shape
using Statistics: mean

const LOSSES = Dict{String,Function}(
    "mse" => Flux.mse,
    "crossentropy" => Flux.crossentropy,
    "logitcrossentropy" => Flux.logitcrossentropy,
    "binarycrossentropy" => Flux.binarycrossentropy,
    "logitbinarycrossentropy" => Flux.logitbinarycrossentropy,
)
const AGGS = Dict{String,Function}("sum" => sum, "mean" => mean)

_named(table, what, name) = get(table, name) do
    throw(ArgumentError("$what must be one of $(join(sort!(collect(keys(table))), ", ")); got \"$name\""))
end

# (N, d) in NumPy index order → d × N, lazily (the Problem copies it once into a Matrix).
_by_column(X::AbstractMatrix) = transpose(X)

"""
    problem(model, θ, X, Y, lossname, agg) -> FluxHess.Problem

The Problem of a call in NumPy's conventions.
"""
function problem(model, θ, X, Y, lossname::AbstractString, agg::AbstractString)
    ℓ, a = _named(LOSSES, "loss", lossname), _named(AGGS, "agg", agg)
    return FluxHess.problem(model_at(model, θ), _by_column(X), _by_column(Y), ℓ, a)
end

# What runs the batch, and the batch d × N, for the quantities without a loss.
function _runner(model, θ, X)
    at = model_at(model, θ)
    return runner(route(at.model), at.model), Matrix{eltype(at.θ)}(_by_column(X))
end

"""
    build_model(source; seed = 0, T = Float64, filename = "model source", spec = false) -> model

Evaluate Julia `source` (whose last expression is the model, e.g. the text of
Python's `Chain.to_flux()`) in a fresh anonymous module that has `using Flux`,
after `Random.seed!(seed)`; convert it with `f64`/`f32` per `T` (before any
`destructure`, which would otherwise narrow θ silently) and call `testmode!`.
`spec = true`: the source is a spec Chain's `to_flux()`, whose LayerNorms mean the
spec's `sqrt(var + eps)`, which the loaded Flux is made to compute
([`with_spec_layernorms`](@ref FluxHess.with_spec_layernorms)).

The module is handed FluxHess's own Flux (`using .Flux`), not Flux looked up by
name: the active Julia project (juliapkg's, after `fluxhess setup-julia`) has
FluxHess, not Flux, as a direct dependency, so `using Flux` there is not found.
"""
function build_model(source::AbstractString; seed::Integer = 0,
                     T::Type = Float64, filename::AbstractString = "model source", spec::Bool = false)
    sandbox = Module(:FluxHessModel)
    Core.eval(sandbox, :(const Flux = $Flux))
    Core.eval(sandbox, :(using .Flux))
    Random.seed!(seed)
    model = Base.include_string(sandbox, String(source), String(filename))
    return prepare(spec ? with_spec_layernorms(model) : model, T)
end

"""
    numpy_view(address, T, shape...) -> Vector{T} or Transpose{T, Matrix{T}}

The C-ordered NumPy array of element type `T` and NumPy `shape` (one or two dimensions)
at memory `address`, without a copy and in NumPy's index order. This is how Python passes
its float arrays: juliacall's own conversion (a `PyArray` per argument type) compiles
code of its own in each fresh process, and a view of plain Julia arrays calls what the
precompile workload compiled. The caller keeps the NumPy array alive and unchanged for
the call, and nothing of the view is kept after it.
"""
numpy_view(address::Integer, ::Type{T}, n::Integer) where {T} = unsafe_wrap(Array, Ptr{T}(UInt(address)), n)
numpy_view(address::Integer, ::Type{T}, rows::Integer, cols::Integer) where {T} =
    transpose(unsafe_wrap(Array, Ptr{T}(UInt(address)), (cols, rows)))

"""
    parameters(model) -> θ::Vector

The flat parameter vector of `Flux.destructure(model)` (a copy).
"""
parameters(model) = copy(first(Flux.destructure(model)))

"""`(N, C)`: the model's outputs for the rows of `X` `(N, d)`."""
forward(model, θ, X) = permutedims(_outputs(_runner(model, θ, X)...))

"""The batch loss `L` for `X` `(N, d)` and targets `Y` `(N, C)`."""
function loss(model, θ, X, Y, lossname, agg)
    p = problem(model, θ, X, Y, lossname, agg)
    return p.L(p.model(p.X), p.Y)
end

"""`(P,)`: `∇_θ L`."""
function gradient(model, θ, X, Y, lossname, agg)
    p = problem(model, θ, X, Y, lossname, agg)
    return gradient_of(p.route, p)
end

"""
    curvature!(out, model, θ, X, Y, lossname, agg, kind; workspace) -> out

The curvature `kind` written into `out` `(P, P)` (a NumPy array: C order is the same
symmetric matrix), panel by panel within `workspace` bytes.
"""
function curvature!(out::AbstractMatrix, model, θ, X, Y, lossname, agg, kind::Kind; workspace::Integer)
    return _into!(out, kind, problem(model, θ, X, Y, lossname, agg), workspace)
end

"""`(P, k)`: the curvature `kind` times each column of `V` `(P, k)`."""
hvp(model, θ, X, Y, V, lossname, agg, kind::Kind) = _products(kind, problem(model, θ, X, Y, lossname, agg), V)

"""`(P,)`: the diagonal of the curvature `kind`."""
function diagonal(model, θ, X, Y, lossname, agg, kind::Kind)
    p = problem(model, θ, X, Y, lossname, agg)
    return diagonal_of(kind, p.route, p)
end

"""KFAC factors `[(A, G)]`, one pair per Dense, Conv or CrossCor layer (see `FluxHess.kron`)."""
function kron(model, θ, X, Y, lossname, agg, kind::Kind)
    p = problem(model, θ, X, Y, lossname, agg)
    return kron_of(kind, p.route, p)
end

"""`(N, C, P)`: `J[n, c, :] = ∂f_c(x_n)/∂θ`."""
function param_jacobian(model, θ, X)
    at = model_at(model, θ)
    Xt = Matrix{eltype(at.θ)}(_by_column(X))
    return param_jacobian_of(route(at.model, Xt), at, Xt)
end

"""`(N, C, d)`: `∂f_c(x_n)/∂x_i`."""
input_jacobian(model, θ, X) = permutedims(input_jacobian_of(_runner(model, θ, X)...), (3, 1, 2))

"""`(N, C, d, d)`: `∂²f_c(x_n)/∂x_i∂x_j`."""
input_hessian(model, θ, X) = permutedims(input_hessian_of(_runner(model, θ, X)...), (4, 1, 2, 3))

"""`(N, C)`: `Δf_c(x_n)`."""
laplacian(model, θ, X) = permutedims(laplacian_of(_runner(model, θ, X)...))

"""`(N,)`: `∇·f(x_n)`."""
divergence(model, θ, X) = divergence_of(_runner(model, θ, X)...)

"""
    error_class(e) -> "input" or "backend"

How the Python side reports the Julia exception `e`: `"input"` (a `fluxhess.InputError`)
for what the arguments were refused for (`ArgumentError`, `DimensionMismatch`, also
inside the `LoadError` of a model's source), `"backend"` otherwise.
"""
error_class(e) = "backend"
error_class(::ArgumentError) = "input"
error_class(::DimensionMismatch) = "input"
error_class(e::LoadError) = error_class(e.error)

end # module Bridge
