#############################################################################
#                 Routes: what the model is decides how to compute          #
#############################################################################

"""
    DenseChain

A Chain seen as `before` (parameter-free layers that only transform the data),
then Dense layers `dense[1:L]` (θ offsets `offsets`), with `φ[l]` the scalar
function applied elementwise after Dense layer `l < L` (its activation, then the
elementwise layers up to the next Dense layer), and `head` the map from the last
Dense layer's pre-activation `z_L` (`o_L × N`) to the output (its activation and
every layer after it, a softmax included).
"""
struct DenseChain{T}
    before::Vector{Any}
    weights::Vector{Matrix{T}}
    biases::Vector{Vector{T}}     # empty where the layer has no bias
    hasbias::Vector{Bool}
    φ::Vector{Any}
    head::Any
    offsets::Vector{Int}
end

"""Any other Flux model: batched over samples, no structure assumed (`src/generic.jl`)."""
struct Generic end

# The layers of a (possibly nested) Chain, in order, as a Tuple.
_flatlayers(c::Flux.Chain) = foldl((acc, l) -> (acc..., _flatlayers(l)...), c; init = ())
_flatlayers(l) = (l,)

# The scalar function of an elementwise layer, or nothing.
_elementwise(l::Base.Fix1{typeof(broadcast)}) = l.x
_elementwise(l) = nothing

# Parameter-free layers known to act on each column (sample) alone.
_columnwise(l) = _elementwise(l) !== nothing || l === Flux.softmax || l === Flux.logsoftmax ||
                 l === identity

_hasbias(d::Flux.Dense) = d.bias isa AbstractArray
_nparams(d::Flux.Dense) = length(d.weight) + (_hasbias(d) ? length(d.bias) : 0)

"""
    route(model) -> DenseChain, ConvChain or Generic()

The Dense-chain route when `model` is a Chain (or a Dense layer) whose parameters are
exactly its Dense layers' weights and biases, with only elementwise layers between
them and only columnwise layers (elementwise, softmax, logsoftmax) after the last;
else the convolutional route when its parameters are its Conv, CrossCor and Dense
layers' own, with only pools, `Flux.flatten` and columnwise layers between them
(`src/conv.jl`); else the generic one.
"""
route(model) = something(_dense_route(model), _conv_route(model), Generic())

"""
    route(model, X) -> DenseChain, ConvChain or Generic()

`route(model)` for a call on the batch `X` (`d × N`), with two more cases before the
generic route: a Chain of Dense layers, or of taps (`src/conv.jl`), with parameter-free
layers the routes do not know after the first (a Julia function such as `x -> 2 .* x`)
takes the Dense-chain or the convolutional route when each such layer acts on the input it
gets from `X` as one scalar function entry by entry ([`_acts_as_scalar`](@ref)). A
curvature at `X` needs no more of a layer than its values and its first and second
derivatives there.
"""
function route(model, X::AbstractMatrix)
    r = route(model)
    r isa Generic || return r                 # no pass over the data where the model decides
    dc = _dense_route_on(model, X)
    dc === nothing || return dc
    return something(_conv_route_on(model, X), Generic())
end

# The DenseChain of `model`, or nothing; `scalar(l)` is the scalar function a parameter-free
# layer after the first Dense layer applies entry by entry, or nothing.
function _dense_route(model, scalar = _elementwise)
    layers = _flatlayers(model)
    θ = first(Flux.destructure(model))
    before, dense, after, tail = Any[], Any[], Vector{Any}[], Any[]
    for l in layers
        if l isa Flux.Dense
            isempty(tail) || return nothing
            push!(dense, l)
            push!(after, Any[])
        elseif !isempty(Flux.trainables(l))
            return nothing
        elseif isempty(dense)
            push!(before, l)
        elseif isempty(tail) && scalar(l) !== nothing
            push!(after[end], scalar(l))
        elseif _columnwise(l)
            push!(tail, l)
        else
            return nothing
        end
    end
    isempty(dense) && return nothing
    # θ must be the Dense layers' arrays, each once (no tied weights), in Chain order.
    T = eltype(θ)
    arrays = [a for d in dense for a in (d.weight, d.bias) if a isa AbstractArray]
    all(a -> a isa Array{T}, arrays) || return nothing
    length(unique(objectid, arrays)) == length(arrays) || return nothing
    sum(_nparams, dense) == length(θ) || return nothing
    φ = Any[foldl((g, f) -> f ∘ g, after[l]; init = dense[l].σ) for l in 1:length(dense)-1]
    head = _Head(foldl((g, f) -> f ∘ g, after[end]; init = dense[end].σ), Tuple(tail))
    offsets = cumsum([0; [_nparams(d) for d in dense[1:end-1]]])
    return DenseChain{T}(before, Matrix{T}[d.weight for d in dense],
                         Vector{T}[_hasbias(d) ? d.bias : T[] for d in dense],
                         Bool[_hasbias(d) for d in dense], φ, head, offsets)
end

# Parameter-free layers the Dense-chain route does not know.
_unknown(l) = !(l isa Flux.Dense) && isempty(Flux.trainables(l)) && _elementwise(l) === nothing && !_columnwise(l)

# The Dense-chain route of `model` on the batch `X`, each unknown layer after the first Dense
# layer taken as `_AsScalar(l)` where it acts as that on its input from `X`; or nothing.
function _dense_route_on(model, X::AbstractMatrix)
    any(_unknown, _flatlayers(model)) || return nothing
    dc = _dense_route(model, l -> _unknown(l) ? _AsScalar(l) : _elementwise(l))
    return dc !== nothing && _scalar_on(model, X, _unknown) ? dc : nothing
end

# Whether each layer of `model` that `pick` picks, after the first layer with parameters,
# acts on its input from the batch `X` as `_AsScalar` of itself ([`_acts_as_scalar`](@ref)).
function _scalar_on(model, X, pick)
    a, started = X, false
    for l in _flatlayers(model)
        out = l(a)
        started |= !isempty(Flux.trainables(l))
        started && pick(l) && !_acts_as_scalar(l, a, out) && return false
        a = out
    end
    return true
end

"""
    _AsScalar(layer)

The scalar function `x ↦ layer([x;;])[1]` of a parameter-free layer: what the Dense-chain
and convolutional routes apply entry by entry where [`_acts_as_scalar`](@ref) found the
layer to act so.
"""
struct _AsScalar{L} <: Function
    layer::L
end
(s::_AsScalar)(x::Number) = only(s.layer(fill(x, 1, 1)))

"""
    _acts_as_scalar(layer, a, out) -> Bool

Whether `layer` (`out = layer(a)`) acts on the batch `a` as `φ = _AsScalar(layer)` entry by
entry: its values are `φ.(a)`, and its first and second derivatives along a direction `V`
(normal entries, a fixed seed) are `φ'.(a) .* V` and `φ''.(a) .* V.^2`, to rounding. A
layer that mixes entries or samples at `a` fails this for all but a null set of `V`; one
that takes no 1 × 1 input, gives no number for it or takes no Duals fails it too.
"""
function _acts_as_scalar(layer, a::AbstractArray{T}, out) where {T}
    out isa AbstractArray && size(out) == size(a) || return false
    V = randn(Random.Xoshiro(0), T, size(a))
    checks = try
        v, d1, d2 = _elementwise_derivatives(_AsScalar(layer), Array{T}(a), true)
        D = ForwardDiff.derivative(t -> layer(a .+ t .* V), ForwardDiff.Dual{_SecondOrder}(zero(T), one(T)))
        ((out, v), (ForwardDiff.value.(D), d1 .* V), (ForwardDiff.partials.(D, 1), d2 .* V .^ 2))
    catch e
        e isa InterruptException && rethrow()
        return false
    end
    return all(((x, y),) -> _agree(x, y), checks)
end

# Equal entry by entry to rounding, relative to the larger's largest entry.
function _agree(x::AbstractArray, y::AbstractArray{T}) where {T}
    size(x) == size(y) && all(isfinite, x) && all(isfinite, y) || return false
    tol = 64 * eps(T) * max(maximum(abs, x), maximum(abs, y))
    return all(i -> abs(x[i] - y[i]) <= tol, eachindex(x, y))
end

# What runs a batch: a Dense chain's type-erased layers, or the model itself.
runner(r::DenseChain, m) = r
runner(::Generic, m) = m

# z_L ↦ output: the elementwise function, then the columnwise layers.
struct _Head{S,T}
    σ::S
    tail::T
end
(h::_Head)(Z) = _through(h.tail, h.σ.(Z))

# The layers of a Tuple applied in turn (a recursion Zygote differentiates, empty or not).
_through(::Tuple{}, a) = a
_through(layers::Tuple, a) = _through(Base.tail(layers), first(layers)(a))

# The data as the first Dense layer sees it.
function _inputs(dc::DenseChain, X::AbstractMatrix{V}) where {V}
    a = foldl((a, l) -> l(a), dc.before; init = X)
    a isa AbstractMatrix || throw(DimensionMismatch(
        "the layers before the first Dense layer must give a matrix; got $(summary(a))"))
    return Matrix{V}(a)
end

"""
    (dc::DenseChain)(X)

The model's outputs for the batch `X` (`d × N`, any number type: Duals for input
derivatives), through the type-erased layers: code compiled once per eltype serves
every Dense chain.
"""
function (dc::DenseChain)(X::AbstractMatrix)
    a = _inputs(dc, X)
    for l in eachindex(dc.weights)
        z = dc.weights[l] * a
        dc.hasbias[l] && (z = z .+ dc.biases[l])
        l == length(dc.weights) && return dc.head(z)
        a = _map(dc.φ[l], z)
    end
end

# φ elementwise: a function barrier on φ's type.
_map(φ, z) = map(φ, z)
