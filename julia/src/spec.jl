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

# The spec name of a layer's activation `σ`, or an ArgumentError naming the layer `at`.
function _activation(σ, at, l)
    name = activation_name(σ)
    name === nothing && throw(ArgumentError(
        "$at ($(_describe(l))) has activation $σ, which is not one of NNlib's activations on inputs " *
        "from -1e8 to 1e8: $(_closest(_tryapply(Z -> map(σ, Z), PROBE)))"))
    return name
end

_describe(l) = l isa Function ? "the function $(repr(l))" : first(sprint(show, l; context = :compact => true), 80)

_floats(a) = a isa AbstractArray ? Array{Float64}(a) : nothing

# Flux's padding (lo_1, hi_1, lo_2, hi_2, …), also when a layer was built with one pad per axis.
function _pads(pad, rank, at, l)
    length(pad) == 2rank && return collect(Int, pad)
    length(pad) == rank && return collect(Int, Iterators.flatten((p, p) for p in pad))
    throw(ArgumentError("$at ($(_describe(l))) has padding $pad, neither one nor two entries per spatial axis"))
end

# Layers in training mode compute what the spec (inference mode) does not.
function _inference(l, at)
    l.active === true && throw(ArgumentError(
        "$at ($(_describe(l))) is in training mode (active = true); its spec twin is the layer in test mode " *
        "(Flux.testmode!)"))
    return nothing
end

_conv_kind(::Flux.Conv) = "conv"
_conv_kind(::Flux.CrossCor) = "crosscor"

"""
    layer_spec(l, at, shape) -> Dict{String,Any}

The spec description of one layer (the table in `fluxhess/_backends/julia/spec_layers.py`),
or an `ArgumentError` that names it (`at`, e.g. `"layer 3.1"`) and says why it has no
twin. `shape`: one sample's shape in Julia order where known (else `nothing`).
"""
function layer_spec(l::Flux.Dense, at, shape)
    hasbias = l.bias isa AbstractArray
    return Dict{String,Any}(
        "kind" => "dense", "in" => size(l.weight, 2), "out" => size(l.weight, 1),
        "activation" => _activation(l.σ, at, l), "bias" => hasbias,
        "weight" => Matrix{Float64}(l.weight), "bias_values" => _floats(l.bias))
end

function layer_spec(l::Union{Flux.Conv,Flux.CrossCor}, at, shape)
    w = l.weight
    rank = ndims(w) - 2
    return Dict{String,Any}(
        "kind" => _conv_kind(l), "kernel" => collect(size(w)[1:rank]),
        "in" => size(w, rank + 1) * _groups(l), "out" => size(w, rank + 2),
        "activation" => _activation(l.σ, at, l), "stride" => collect(l.stride),
        "pad" => _pads(l.pad, rank, at, l), "dilation" => collect(l.dilation), "groups" => _groups(l),
        "bias" => l.bias isa AbstractArray, "weight" => Array{Float64}(w), "bias_values" => _floats(l.bias))
end

_pool_kind(::Flux.MeanPool) = "meanpool"
_pool_kind(::Flux.MaxPool) = "maxpool"

layer_spec(l::Union{Flux.MeanPool,Flux.MaxPool}, at, shape) = Dict{String,Any}(
    "kind" => _pool_kind(l), "window" => collect(l.k), "stride" => collect(l.stride),
    "pad" => _pads(l.pad, length(l.k), at, l))

layer_spec(l::Flux.AdaptiveMeanPool, at, shape) = Dict{String,Any}("kind" => "adaptivemeanpool", "out" => collect(l.out))

layer_spec(::Flux.GlobalMeanPool, at, shape) = Dict{String,Any}("kind" => "globalmeanpool")

function layer_spec(l::Flux.Dropout, at, shape)
    _inference(l, at)
    return Dict{String,Any}("kind" => "dropout", "p" => Float64(l.p))
end

function layer_spec(l::Flux.BatchNorm, at, shape)
    _inference(l, at)
    l.track_stats && l.μ isa AbstractArray || throw(ArgumentError(
        "$at ($(_describe(l))) keeps no running statistics (track_stats = false), so it normalises " *
        "with each batch's own; the spec's BatchNorm uses fixed statistics"))
    return Dict{String,Any}(
        "kind" => "batchnorm", "channels" => l.chs, "activation" => _activation(l.λ, at, l),
        "eps" => Float64(l.ϵ), "affine" => l.affine, "mean" => _floats(l.μ), "var" => _floats(l.σ²),
        "beta" => l.affine ? _floats(l.β) : nothing, "gamma" => l.affine ? _floats(l.γ) : nothing)
end

# What a LayerNorm applies after normalising: its Scale (γ, β and the activation) or the activation alone.
_norm_activation(d::Flux.Scale) = d.σ
_norm_activation(d::Base.Fix1{typeof(broadcast)}) = d.x
_norm_activation(::typeof(identity)) = identity

"""
    layernorm_eps(ϵ) -> Float64

The `eps` of the spec's LayerNorm, `(x - mean) / sqrt(var + eps)`, that a Flux
`LayerNorm` with `ϵ` computes on Float64 samples, as the loaded Flux's `normalise` does
it: Flux 0.16.11 and later add `ϵ`, earlier 0.16 versions `ϵ²`. Read from what
`normalise` does on `[-1, 1]` (variance 1) with `eps = 0.5`.
"""
function layernorm_eps(ϵ)
    y = Flux.normalise([-1.0, 1.0]; dims = 1, eps = 0.5)[2]
    isapprox(y, 1 / sqrt(1.5); rtol = 1e-12) && return Float64(ϵ)
    isapprox(y, 1 / sqrt(1.25); rtol = 1e-12) && return Float64(ϵ)^2
    throw(ArgumentError("this Flux's normalise gives $y on [-1, 1] with eps = 0.5, neither 1/√(1 + ε) " *
                        "nor 1/√(1 + ε²), so its LayerNorm has no spec twin"))
end

function layer_spec(l::Flux.LayerNorm, at, shape)
    affine = l.affine
    affine && !(l.diag isa Flux.Scale && l.diag.bias isa AbstractArray) && throw(ArgumentError(
        "$at ($(_describe(l))) has an affine part without a bias; the spec's LayerNorm has γ and β"))
    return Dict{String,Any}(
        "kind" => "layernorm", "size" => collect(l.size), "activation" => _activation(_norm_activation(l.diag), at, l),
        "eps" => layernorm_eps(l.ϵ), "affine" => affine,
        "scale" => affine ? _floats(l.diag.scale) : nothing, "bias_values" => affine ? _floats(l.diag.bias) : nothing)
end

function _adds(l, at)
    l.connection === (+) || throw(ArgumentError(
        "$at ($(_describe(l))) joins its branches with $(l.connection); the spec's $(nameof(typeof(l))) " *
        "adds them (the connection `+`)"))
    return nothing
end

function layer_spec(l::Flux.SkipConnection, at, shape)
    _adds(l, at)
    return Dict{String,Any}("kind" => "skip", "layers" => _sequence_specs(_flatlayers(l.layers), "$at.", shape))
end

# A Parallel branch: its layers (a Chain opened), none for identity.
_branch_specs(::typeof(identity), at, shape) = Dict{String,Any}[]
_branch_specs(b, at, shape) = _sequence_specs(_flatlayers(b), at, shape)

function layer_spec(l::Flux.Parallel, at, shape)
    _adds(l, at)
    branches = collect(values(l.layers))
    length(branches) >= 2 || throw(ArgumentError(
        "$at ($(_describe(l))) has one branch; the spec's Parallel adds two or more"))
    return Dict{String,Any}("kind" => "parallel",
                            "branches" => [_branch_specs(b, "$at.$k.", shape) for (k, b) in enumerate(branches)])
end

function layer_spec(l, at, shape)
    isempty(Flux.trainables(l)) || throw(ArgumentError(
        "$at ($(_describe(l))) has parameters and no spec twin: the spec's layers with parameters are Dense, " *
        "Conv, CrossCor, BatchNorm and LayerNorm (inside SkipConnection(…, +) and Parallel(+, …) too)"))
    found = identify(l; input_shapes = shape === nothing ? FLATTEN_PROBES : (shape,))
    found isa Dict && return found
    throw(ArgumentError("$at ($(_describe(l))) cannot be identified: $found"))
end

# One sample's shape after `l` (Julia order), tried on a batch of one; nothing when unknown.
function _next_shape(l, shape)
    shape === nothing && return nothing
    y = _tryapply(l, zeros(Float32, shape..., 1))
    return y isa AbstractArray && size(y, ndims(y)) == 1 ? size(y)[1:end-1] : nothing
end

# The descriptions of layers applied in order, numbered "$(prefix)1", "$(prefix)2", …
function _sequence_specs(layers, prefix, shape)
    specs = Dict{String,Any}[]
    for (k, l) in enumerate(layers)
        push!(specs, layer_spec(l, "$prefix$k", shape))
        shape = _next_shape(l, shape)
    end
    return specs
end

"""
    to_spec(model; input_shape = nothing) -> Vector{Dict{String,Any}}

The layers of a Flux model as the Python package's spec describes them, one Dict per
layer of the flattened layer list (nested Chains opened), each with its `"kind"`:
`"dense"`, `"conv"`, `"crosscor"`, `"meanpool"`, `"maxpool"`, `"adaptivemeanpool"`,
`"globalmeanpool"`, `"batchnorm"`, `"layernorm"`, `"dropout"`, `"skip"` (a
`SkipConnection(layer, +)`, its layers nested) and `"parallel"` (a `Parallel(+, …)`,
each branch's layers nested), and parameter-free layers that [`identify`](@ref)
recognises (`"activation"`, `"flatten"`). Every size and tuple is in Julia order as
Flux stores it, arrays are Flux's (Float64); the keys of each kind are listed in
`fluxhess/_backends/julia/spec_layers.py`. Norm layers and Dropout are described in
test mode (BatchNorm with its running statistics; a LayerNorm's `eps` as the loaded
Flux applies it, [`layernorm_eps`](@ref)).

`input_shape`: one sample's shape in Julia order, when known: each layer's samples are
then known too (a function that flattens is recognised on exactly them).
Throws an `ArgumentError` naming the first layer that has no spec twin (`"layer 3"`,
inside a block `"layer 3.1"`, in a Parallel's second branch `"layer 3.2.1"`), and why.
"""
function to_spec(model; input_shape = nothing)
    shape = input_shape === nothing ? nothing : Tuple(Int.(input_shape))
    return _sequence_specs(_flatlayers(model), "layer ", shape)
end

"""
    with_spec_layernorms(model) -> model

`model`, written from a spec Chain (Python's `Chain.to_flux()`), with every `LayerNorm`
computing the spec's `(x - mean) / sqrt(var + ϵ)` on the loaded Flux: the model itself
where Flux adds `ϵ` (0.16.11 and later), else a copy whose LayerNorms have `ϵ = √ϵ`
(Flux 0.16.0 to 0.16.10 add `ϵ²`; see [`layernorm_eps`](@ref)). Its arrays are the
model's own.
"""
function with_spec_layernorms(model)
    layernorm_eps(0.5) == 0.5 && return model
    rebuilt(l::Flux.LayerNorm) = Flux.LayerNorm(l.λ, l.diag, sqrt(l.ϵ), l.size, l.affine)
    rebuilt(x) = x
    return Flux.fmap(rebuilt, model; exclude = x -> x isa Flux.LayerNorm || Flux.Functors.isleaf(x))
end
