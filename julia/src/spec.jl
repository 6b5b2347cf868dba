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
