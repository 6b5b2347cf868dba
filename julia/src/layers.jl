#############################################################################
#      A model's layers: its parameter blocks, its parts, its input shape   #
#############################################################################

"""
    InputShape(dims)

A parameter-free first layer that gives a model its batch in the shape it was
written for: the `d × N` matrix every entry function works on, reshaped to
`(dims..., N)`, `d = prod(dims)`. NumPy's `(N, a, b, c)` in C order is Julia's
`(c, b, a, N)` in column-major order, the same memory: so `dims = (c, b, a)`.
"""
struct InputShape{K}
    dims::NTuple{K,Int}
end

(s::InputShape)(X::AbstractMatrix) = reshape(X, s.dims..., size(X, 2))

"""
    with_input_shape(model, dims) -> Chain

`model` fed its samples as arrays of shape `dims` (Julia order) from `d × N` matrices
(see [`InputShape`](@ref)). The parameters, and their order, are `model`'s own.
"""
with_input_shape(model, dims) = Flux.Chain(InputShape(Tuple(Int.(dims))), model)

"""
    sublayers(model, first, last) -> Chain

The layers `first:last` (1-based, of the flattened layer list: nested Chains are
opened) as one Chain, sharing their arrays with `model`.
"""
function sublayers(model, first::Integer, last::Integer)
    layers = _flatlayers(model)
    1 <= first <= last <= length(layers) || throw(ArgumentError(
        "layers $first:$last are not within the model's $(length(layers)) layers"))
    return Flux.Chain(layers[first:last]...)
end

# A layer's trainable arrays with their field names, in destructure order.
function _named_trainables(l)
    l isa Flux.Dense && return [("weight", l.weight); _hasbias(l) ? [("bias", l.bias)] : []]
    return [(join(string.(path.keys), "."), a) for (path, a) in Flux.trainables(l; path = true)]
end

"""
    layout(model) -> Vector{Dict{String,Any}}

One entry per layer of the flattened layer list: `"summary"` (how Flux prints it),
`"blocks"` (each `"name"` => field path such as `"weight"`, `"shape"` in Julia order,
`"offset"` into θ, 0-based), `"dense"` (`(in, out, has bias)` of a Dense layer, else
`nothing`) and `"spec"`, the layer's spec twin when it is
parameter-free and [`identify`](@ref) recognises it (`nothing` otherwise).
Throws an `ArgumentError` when θ is not the layers' arrays each once in order
(tied weights, or parameters captured outside the layers).
"""
function layout(model)
    θ = first(Flux.destructure(model))
    offset, entries = 0, Dict{String,Any}[]
    for l in _flatlayers(model)
        blocks = Dict{String,Any}[]
        for (name, a) in _named_trainables(l)
            offset + length(a) <= length(θ) && view(θ, offset+1:offset+length(a)) == vec(a) ||
                throw(ArgumentError("θ is not the layers' arrays in order at $(summary(l)).$name " *
                                    "(tied weights or parameters captured outside the layers)"))
            push!(blocks, Dict{String,Any}("name" => name, "shape" => collect(size(a)), "offset" => offset))
            offset += length(a)
        end
        found = isempty(blocks) && !(l isa Flux.Dense) ? identify(l) : nothing
        dense = l isa Flux.Dense ? (size(l.weight, 2), size(l.weight, 1), _hasbias(l)) : nothing
        push!(entries, Dict{String,Any}("summary" => _describe(l), "blocks" => blocks, "dense" => dense,
                                        "spec" => found isa Dict ? found : nothing))
    end
    offset == length(θ) || throw(ArgumentError(
        "the layers hold $offset parameters but destructure gives $(length(θ))"))
    return entries
end
