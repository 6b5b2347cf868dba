#############################################################################
#          Back to the Python layer spec: layers identified by effect       #
#############################################################################

# NNlib's elementwise activations that the spec has, by name (nameof(sigmoid) is
# :σ, and NNlib's gelu is the same function as gelu_tanh). The Python registry
# (fluxhess/activations.py) lists the same names; a test checks that they agree.
const ACTIVATIONS = (
    identity => "identity", Flux.relu => "relu", tanh => "tanh",
    Flux.sigmoid => "sigmoid", Flux.softplus => "softplus", Flux.elu => "elu",
    Flux.leakyrelu => "leakyrelu", Flux.swish => "swish", Flux.gelu => "gelu",
)

# Column maps of the spec (softmax over each sample's outputs).
const COLUMN_MAPS = (Flux.softmax => "softmax", Flux.logsoftmax => "logsoftmax")

"""
    PROBE

The values a parameter-free function is tried on before it is taken for an NNlib
activation: a fine grid on [-10, 10] (where the activations bend), then magnitudes
up to 1e8, so that a function that is capped, clipped or rescaled anywhere
(relu6, a clamped tanh, 2σ) is never mistaken for the activation it follows near 0.
Arranged 4 to a column, with large and small values in every column, for the
softmax check.
"""
const PROBE = let tails = [15.0, 20, 30, 50, 100, 300, 1e3, 1e4, 1e6, 1e8]
    v = vcat(-reverse(tails), collect(-10.0:0.125:10.0), tails)
    v = vcat(v, zeros(mod(-length(v), 4)))
    reshape(v[sortperm(mod.(1:length(v), 7) .* 1000 .+ (1:length(v)))], 4, :)
end

# a agrees with the reference b to round-off (NaN where b is NaN, the same infinity).
_close(a, b) = (isnan(a) && isnan(b)) || (isinf(b) ? a == b : abs(a - b) <= 1e-10 * max(1, abs(b)))
_agrees(y, r) = size(y) == size(r) && all(splat(_close), zip(y, r))

_tryapply(f, x) = try f(x) catch; nothing end

"""
    activation_name(f) -> String or nothing

The spec name of the scalar function `f` when it is one of NNlib's activations:
the same function object, or a function that agrees with one to round-off on every
value of [`PROBE`](@ref).
"""
function activation_name(f)
    for (g, name) in ACTIVATIONS
        f === g && return name
    end
    y = _tryapply(Z -> map(f, Z), PROBE)
    y isa AbstractArray{<:Real} || return nothing
    for (g, name) in ACTIVATIONS
        _agrees(y, g.(PROBE)) && return name
    end
    return nothing
end

# The activation that agrees with the values y of an elementwise map on the most
# probe inputs, and where it differs most, for the refusal.
function _closest(y)
    y isa AbstractArray{<:Real} && size(y) == size(PROBE) || return "it fails on some of these inputs"
    g, name = ACTIVATIONS[argmax([count(splat(_close), zip(y, g.(PROBE))) for (g, _) in ACTIVATIONS])]
    r = g.(PROBE)
    gaps = [isnan(a - b) ? Inf : abs(a - b) for (a, b) in zip(y, r)]
    i = argmax(gaps)
    return "closest is $name (the same on $(count(splat(_close), zip(y, r))) of $(length(r)) inputs), " *
           "which it differs from by $(round(gaps[i]; sigdigits = 3)) at x = $(PROBE[i])"
end

# Sample shapes tried on a parameter-free layer before the first Dense layer (Julia
# order, batch of 3 last): a layer that flattens each sample of one of them is a Flatten.
const FLATTEN_PROBES = ((2, 3), (2, 3, 4), (2, 3, 4, 5), (2, 3, 2, 3, 2))

function _flattens(l, shapes)
    for dims in shapes
        x = reshape(collect(1.0:prod(dims) * 3), dims..., 3)
        _tryapply(l, x) == reshape(x, :, 3) && return true
    end
    return false
end

"""
    identify(l; input_shapes = FLATTEN_PROBES) -> Dict or String

A parameter-free layer as a spec layer (`"kind"` => `"activation"`/`"flatten"`),
or, when it is none, a sentence saying why. Known functions by identity
(`Flux.flatten`, `softmax`, `Base.Fix1(broadcast, σ)`); any other callable by what
it does: a flatten when it maps a batch of one of `input_shapes` (plus a batch
dimension) to `reshape(x, :, N)`, an activation or softmax/logsoftmax when its
values on [`PROBE`](@ref) are the NNlib function's to round-off.
"""
function identify(l; input_shapes = FLATTEN_PROBES)
    _isflatten(l) && return Dict{String,Any}("kind" => "flatten")
    for (g, name) in COLUMN_MAPS
        l === g && return _activation_spec(name)
    end
    if l isa Base.Fix1{typeof(broadcast)}
        name = activation_name(l.x)
        name === nothing || return _activation_spec(name)
    end
    _flattens(l, input_shapes) && return Dict{String,Any}("kind" => "flatten")
    y = _tryapply(l, PROBE)
    y isa AbstractMatrix{<:Real} && size(y) == size(PROBE) ||
        return "it is neither a flatten (tried on samples of shapes $(join(map(reverse, input_shapes), ", "))) " *
               "nor elementwise (on a 4 × $(size(PROBE, 2)) matrix it gave $(y === nothing ? "an error" : summary(y)))"
    for (g, name) in ACTIVATIONS
        _agrees(y, g.(PROBE)) && return _activation_spec(name)
    end
    for (g, name) in COLUMN_MAPS
        _agrees(y, g(PROBE)) && return _activation_spec(name)
    end
    return "it is not one of NNlib's activations (identity, relu, tanh, sigmoid, softplus, elu, leakyrelu, " *
           "swish, gelu) nor softmax/logsoftmax on inputs from -1e8 to 1e8: $(_closest(y))"
end

_activation_spec(name) = Dict{String,Any}("kind" => "activation", "activation" => name)

_isflatten(f) = f === Flux.flatten ||
    (f isa Function && nameof(f) === :flatten && nameof(parentmodule(f)) === :MLUtils)

function _layer_spec(i, l, input_shapes)
    if l isa Flux.Dense
        act = activation_name(l.σ)
        act === nothing && throw(ArgumentError(
            "layer $i ($l) has activation $(l.σ), which is not one of NNlib's activations on inputs " *
            "from -1e8 to 1e8: $(_closest(_tryapply(Z -> map(l.σ, Z), PROBE)))"))
        hasbias = l.bias isa AbstractArray
        return Dict{String,Any}(
            "kind" => "dense", "in" => size(l.weight, 2), "out" => size(l.weight, 1),
            "activation" => act, "bias" => hasbias,
            "weight" => Matrix{Float64}(l.weight),
            "bias_values" => hasbias ? Vector{Float64}(l.bias) : nothing)
    end
    isempty(Flux.trainables(l)) || throw(ArgumentError(
        "layer $i ($(summary(l))) has parameters and is not a Dense layer, so it has no spec twin"))
    found = identify(l; input_shapes)
    found isa Dict && return found
    throw(ArgumentError("layer $i ($(_describe(l))) cannot be identified: $found"))
end

_describe(l) = l isa Function ? "the function $(repr(l))" : first(sprint(show, l; context = :compact => true), 80)

"""
    to_spec(model; input_shape = nothing) -> Vector{Dict{String,Any}}

The layers of a model made only of Dense layers and parameter-free layers that
[`identify`](@ref) recognises, each a Dict with `"kind"` (`"dense"`,
`"activation"` or `"flatten"`); Dense layers also carry `"in"`, `"out"`,
`"activation"`, `"bias"` (a Bool), `"weight"` (out × in) and `"bias_values"` (or
`nothing`). `input_shape`: one sample's shape in Julia order, when known (a flatten
is then recognised on exactly that shape). Throws an `ArgumentError` naming the
first layer that has no spec twin, and why.
"""
function to_spec(model; input_shape = nothing)
    shapes = input_shape === nothing ? FLATTEN_PROBES : (Tuple(Int.(input_shape)),)
    return [_layer_spec(i, l, shapes) for (i, l) in enumerate(_flatlayers(model))]
end
