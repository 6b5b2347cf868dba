#############################################################################
#               Any Flux model: batched over samples, no structure          #
#############################################################################

# J (C·n × P): row c + (j - 1)·C is ∂f_c(x_j)/∂θ, by forward mode through re(θ)(X), all
# samples at once, in chunks of w parameter directions: for any model.
function output_jacobian_rows(re, θ::Vector{T}, X::AbstractMatrix) where {T}
    return _output_jacobian_rows(re, θ, X, Val(min(length(θ), CHUNK)))
end

function _output_jacobian_rows(re, θ::Vector{T}, X, ::Val{w}) where {T,w}
    P = length(θ)
    tag = ForwardDiff.Tag(re, T)
    D = ForwardDiff.Dual{typeof(tag),T,w}
    θd = Vector{D}(undef, P)
    J = Matrix{T}(undef, 0, 0)
    for c0 in 1:w:P
        for i in 1:P
            θd[i] = D(θ[i], ForwardDiff.Partials{w,T}(ntuple(t -> T(c0 + t - 1 == i), Val(w))))
        end
        out = re(θd)(X)
        c0 == 1 && (J = Matrix{T}(undef, length(out), P))
        for t in 1:min(w, P - c0 + 1), r in eachindex(out)
            J[r, c0+t-1] = ForwardDiff.partials(typeof(tag), out[r], t)
        end
    end
    return J
end

#----------- Chains of layers that act on each sample alone: reverse mode ------------#

"""
    LayerChain

A Chain whose parameters are its layers' own (each layer's `destructure`, in Chain
order, concatenates to θ). Its per-sample Jacobian rows come from one batched pullback
per output through the layers, the parameter part of each layer taken one sample at a
time: a Dense layer's in closed form (`δ_z ⊗ ā`), any other layer's by its own Zygote
pullback on that sample. This needs every layer to act on each sample (the last
dimension) alone, which [`_layer_rows`](@ref) checks on the data.
"""
struct LayerChain
    layers::Vector{Any}
    offsets::Vector{Int}
    sizes::Vector{Int}
end

function _layer_chain(model, θ::AbstractVector)
    layers = Any[_flatlayers(model)...]
    flats = [first(Flux.destructure(l)) for l in layers]
    sizes = length.(flats)
    sum(sizes) == length(θ) || return nothing          # tied or shared parameters
    offsets = cumsum([0; sizes[1:end-1]])
    for k in eachindex(layers)
        sizes[k] == 0 || flats[k] == view(θ, offsets[k]+1:offsets[k]+sizes[k]) || return nothing
    end
    return LayerChain(layers, offsets, sizes)
end

_sample(a::AbstractArray, j) = collect(selectdim(a, ndims(a), j:j))

# Whether `layer` maps the batch `a` to `out` one sample at a time (probed on two samples).
function _acts_per_sample(layer, a, out)
    out isa AbstractArray && size(out, ndims(out)) == size(a, ndims(a)) || return false
    n = size(a, ndims(a))
    return all(unique((1, n))) do j
        isapprox(layer(_sample(a, j)), _sample(out, j); rtol = 1e-10, atol = 1e-14)
    end
end

# The parameter part (rows of R: one per sample) and the input cotangent of one layer.
function _layer_backward!(R, layer::Flux.Dense, a::AbstractMatrix{T}, δ) where {T}
    z = layer.weight * a
    _hasbias(layer) && (z .+= layer.bias)
    σ = layer.σ
    δz = δ .* map(x -> _derivative(σ, x), z)
    o, n = size(δz)
    ā = _hasbias(layer) ? vcat(a, ones(T, 1, n)) : a
    @inbounds for j in axes(ā, 1), q in 1:o
        col = q + (j - 1) * o
        for s in 1:n
            R[s, col] = δz[q, s] * ā[j, s]
        end
    end
    return transpose(layer.weight) * δz
end

function _layer_backward!(R, layer, a, δ)
    if size(R, 2) > 0
        θk, rek = Flux.destructure(layer)
        for j in axes(R, 1)
            _, back = Zygote.pullback(ϑ -> rek(ϑ)(_sample(a, j)), θk)
            R[j, :] = something(back(_sample(δ, j))[1], zero(θk))
        end
    end
    _, back = Zygote.pullback(layer, a)
    return something(back(δ)[1], zero(a))
end

"""
    _layer_rows(lc, X, seeds) -> R or nothing

`R[(c, j), :] = seeds[c][:, j]ᵀ ∂f(x_j)/∂θ`, row `c + (j - 1)·length(seeds)`, for
cotangents `seeds` (each `C × n`) at the output; `nothing` when a layer mixes samples.
"""
function _layer_rows(lc::LayerChain, X::Matrix{T}, seeds) where {T}
    acts = Any[X]
    for l in lc.layers
        out = l(acts[end])
        _acts_per_sample(l, acts[end], out) || return nothing
        push!(acts, out)
    end
    S, n = length(seeds), size(X, 2)
    R = zeros(T, S * n, sum(lc.sizes))
    for (c, seed) in enumerate(seeds)
        δ = seed
        for k in reverse(eachindex(lc.layers))
            cols = lc.offsets[k]+1:lc.offsets[k]+lc.sizes[k]
            δ = _layer_backward!(view(R, c:S:S*n, cols), lc.layers[k], acts[k], δ)
        end
    end
    return R
end

"""
    jacobian_rows(model, re, θ, X, C) -> J (C·n × P)

Row `c + (j - 1)·C` is `∂f_c(x_j)/∂θ`: layer by layer (reverse mode, [`LayerChain`](@ref))
where the model allows it, else by forward mode through `re(θ)(X)`.
"""
function jacobian_rows(model, re, θ::Vector{T}, X::Matrix{T}, C::Integer) where {T}
    lc = _layer_chain(model, θ)
    if lc !== nothing
        seeds = [(E = zeros(T, C, size(X, 2)); E[c, :] .= one(T); E) for c in 1:C]
        J = _layer_rows(lc, X, seeds)
        J === nothing || return J
    end
    return output_jacobian_rows(re, θ, X)
end

gradient_of(::Generic, p::Problem) = _gradient(objective(p), p.θ)

# Chunks of samples whose Jacobian rows (C·n × P) fit the budget.
_generic_chunks(p::Problem{T}, budget) where {T} =
    _sample_chunks(size(p.X, 2), 2 * sizeof(T) * size(p.Y, 1) * length(p.θ), budget)

# Per chunk of samples: J (C·n × P), the outputs F (C × n) and the chunk's targets.
function _each_jacobian(f, p::Problem{T}, budget) where {T}
    for (c, cols) in enumerate(_generic_chunks(p, budget))
        X, Y = p.X[:, cols], p.Y[:, cols]
        f(c, jacobian_rows(p.model, p.re, p.θ, X, size(p.Y, 1)), p.model(X), Y)
    end
end

# Λ J: each sample's C rows of J times its Λ_n = ∇²_f ℓ_n.
function _times_output_hessians(p::Problem, J, F, Y)
    Λ = columnwise_hessian(G -> p.ℓ(G, Y; agg = _columns), F)
    C = size(F, 1)
    ΛJ = similar(J)
    for j in axes(F, 2)
        rows = (j-1)*C+1:j*C
        mul!(view(ΛJ, rows, :), view(Λ, :, :, j), view(J, rows, :))
    end
    return ΛJ
end

# G (n × P): row j is sample j's gradient Jᵀ_j ∇_f ℓ_j.
function _gradient_rows(p::Problem, J, F, Y)
    r = columnwise_gradient(G -> p.ℓ(G, Y; agg = _columns), F)        # C × n
    C, n = size(F)
    return dropdims(sum(reshape(r, C, n, 1) .* reshape(J, C, n, :); dims = 1); dims = 1)
end

# The Jacobian rows of a chunk and Λ J (or the gradient rows) fit `workspace` bytes.
function curvature_into!(H::AbstractMatrix{T}, ::GGN, ::Generic, p::Problem{T}, workspace) where {T}
    _each_jacobian(p, workspace) do c, J, F, Y
        mul!(H, transpose(J), _times_output_hessians(p, J, F, Y), p.s, c > 1)
    end
    return _symmetrized!(H)
end

function curvature_into!(H::AbstractMatrix{T}, ::EmpiricalFisher, ::Generic, p::Problem{T}, workspace) where {T}
    _each_jacobian(p, workspace) do c, J, F, Y
        _gram!(H, _gradient_rows(p, J, F, Y), p.s, c > 1)
    end
    return _mirror_lower!(H)
end

"""
    curvature_into!(H, ::Hessian, ::Generic, p, workspace) -> H

Forward over reverse (Duals of [`HessianTag`](@ref) through a Zygote gradient), in
chunks of up to `CHUNK` columns (the widths of [`_width`](@ref), which compile once). A
Chain whose parameters are its layers' own ([`LayerChain`](@ref)) goes layer by layer
([`_hessian_blocks!`](@ref)); any other model as one block, the whole batch at once.
"""
function curvature_into!(H::AbstractMatrix{T}, ::Hessian, ::Generic, p::Problem{T}, workspace) where {T}
    lc = _layer_chain(p.model, p.θ)
    lc === nothing || return _hessian_blocks!(H, lc, p, workspace)
    _hessian_block!(H, objective(p), p.θ, 0, length(p.θ), false, Val(_width(length(p.θ))))
    return _symmetrized!(H)
end

"""
    _hessian_blocks!(H, lc::LayerChain, p, workspace) -> H

The Hessian layer by layer: the columns of layer k's parameters θ_k are the derivatives,
along each of θ_k's directions, of the gradient of `L_k(θ_k, θ_k+1, …) = L(layers_k…(a_k))`
with respect to θ_k, θ_k+1, …, where `a_k` is the input of layer k, computed once on
floats. Duals pass through layers k, k+1, … only, and each column block gets the rows of
its own layer and those after it (the lower block triangle); the upper one is its mirror.
When every layer acts on each sample alone, the batch goes in chunks of samples whose
Dual tape fits `workspace` bytes (`L = s · Σ_n ℓ_n` adds over samples); else at once.
"""
function _hessian_blocks!(H::AbstractMatrix{T}, lc::LayerChain, p::Problem{T}, workspace) where {T}
    ks = filter(k -> lc.sizes[k] > 0, eachindex(lc.layers))
    for (c, cols) in enumerate(_hessian_chunks(lc, p, workspace))
        a, Y = p.X[:, cols], p.Y[:, cols]
        for k in eachindex(lc.layers)
            if lc.sizes[k] > 0
                θk, rek = Flux.destructure(Flux.Chain(lc.layers[k:end]...))   # θ_k, θ_k+1, …
                _hessian_block!(H, _tail_loss(p, rek, a, Y), θk, lc.offsets[k], lc.sizes[k], c > 1,
                                Val(_width(lc.sizes[k])))
            end
            a = lc.layers[k](a)
        end
    end
    for k in ks
        r = lc.offsets[k]+1:lc.offsets[k]+lc.sizes[k]
        _symmetrized!(view(H, r, r))
    end
    return _mirror_lower!(H)
end

# θ_k… ↦ s · Σ_n ℓ_n over the chunk, from the input `a` of layer k on.
_tail_loss(p::Problem, rek, a, Y) = ϑ -> p.s * p.ℓ(rek(ϑ)(a), Y; agg = sum)

# Chunks of samples whose Dual tape fits `workspace`: probed on two samples, each layer's
# output per sample (its Dual, its pullback's cotangent and the BLAS copies of both, at
# most 4 × (CHUNK + 1) numbers per entry); the whole batch when a layer mixes samples.
function _hessian_chunks(lc::LayerChain, p::Problem{T}, workspace) where {T}
    N = size(p.X, 2)
    a, entries = p.X[:, unique((1, N))], 0
    for l in lc.layers
        out = l(a)
        _acts_per_sample(l, a, out) || return [1:N]
        entries += length(out) ÷ size(out, ndims(out))
        a = out
    end
    return _sample_chunks(N, 4 * (CHUNK + 1) * sizeof(T) * entries, workspace)
end

"""
    _hessian_block!(H, L, θ, offset, n, add, ::Val{w}) -> H

Columns `offset .+ (1:n)` of the Hessian of `L` (rows `offset .+ eachindex(θ)`), for the
first n entries of θ: ⌈n/w⌉ Zygote gradients of `L` at Duals of width w seeded along w of
those entries at a time; written into H, or added to it when `add`.
"""
function _hessian_block!(H, L, θ::Vector{T}, offset, n, add::Bool, ::Val{w}) where {T,w}
    D = HDual{T,w}
    θd = D.(θ)
    for c0 in 1:w:n
        for i in max(1, c0 - w):min(n, c0 + w - 1)      # the last chunk's seeds off, this one's on
            θd[i] = D(θ[i], ForwardDiff.Partials{w,T}(ntuple(t -> T(c0 + t - 1 == i), Val(w))))
        end
        _add_partials!(H, _gradient(L, θd), offset, c0 - 1, min(w, n - c0 + 1), add)
    end
    return H
end

function _add_partials!(H, g::AbstractVector{<:ForwardDiff.Dual}, offset, c, m, add::Bool)
    @inbounds for t in 1:m, r in eachindex(g)
        h = ForwardDiff.partials(g[r], t)
        H[offset+r, offset+c+t] = add ? H[offset+r, offset+c+t] + h : h
    end
    return H
end

function _symmetrized!(H::AbstractMatrix)
    for c in axes(H, 2), r in c+1:size(H, 1)
        H[r, c] = H[c, r] = (H[r, c] + H[c, r]) / 2
    end
    return H
end

function diagonal_of(::Hessian, ::Generic, p::Problem{T}) where {T}
    return Vector{T}(Zygote.diaghessian(objective(p), p.θ)[1])
end

function diagonal_of(::GGN, ::Generic, p::Problem{T}) where {T}
    d = zeros(T, length(p.θ))
    _each_jacobian(p, FACTOR_CHUNK_BYTES) do c, J, F, Y
        d .+= p.s .* vec(sum(J .* _times_output_hessians(p, J, F, Y); dims = 1))
    end
    return d
end

function diagonal_of(::EmpiricalFisher, ::Generic, p::Problem{T}) where {T}
    d = zeros(T, length(p.θ))
    _each_jacobian(p, FACTOR_CHUNK_BYTES) do c, J, F, Y
        d .+= p.s .* vec(sum(abs2, _gradient_rows(p, J, F, Y); dims = 1))
    end
    return d
end

function _param_jacobian(::Generic, m, re, θ::Vector{T}, X::Matrix{T}) where {T}
    N = size(X, 2)
    J = jacobian_rows(m, re, θ, X, size(_outputs(m, X[:, 1:1]), 1))
    return permutedims(reshape(J, :, N, length(θ)), (2, 1, 3))
end

#----------------- KFAC of a Chain of Dense and other layers ---------------#

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

# KFAC's G factors: s Σ_n δ_n δ_nᵀ (EF) or s Σ_n B_nᵀ Λ_n B_n (GGN), through ε-perturbed pre-activations.
function _kron_output_factors(::EmpiricalFisher, p, layers, εs)
    δs = Zygote.gradient(ε -> p.ℓ(_perturbed(layers, p.X, ε), p.Y; agg = sum), εs)[1]
    return [p.s .* (δ * transpose(δ)) for δ in δs]
end

function _kron_output_factors(::GGN, p::Problem{T}, layers, εs) where {T}
    Ŷ, back = Zygote.pullback(ε -> _perturbed(layers, p.X, ε), εs)
    C, N = size(Ŷ)
    Λ = columnwise_hessian(G -> p.ℓ(G, p.Y; agg = _columns), Ŷ)
    # B[l][:, :, n] = B_n for layer l (C × out_l).
    B = [zeros(T, C, size(ε, 1), N) for ε in εs]
    for k in 1:C
        seed = zeros(T, C, N)
        seed[k, :] .= 1
        for (l, g) in enumerate(back(seed)[1])
            B[l][k, :, :] = g
        end
    end
    return map(B) do Bl
        G = zeros(T, size(Bl, 2), size(Bl, 2))
        for n in 1:N
            Bn = Bl[:, :, n]
            mul!(G, transpose(Bn), view(Λ, :, :, n) * Bn, p.s, one(T))
        end
        (G .+ transpose(G)) ./ 2
    end
end

function kron_of(kind::Union{GGN,EmpiricalFisher}, ::Generic, p::Problem{T}) where {T}
    m = p.model
    m isa Flux.Chain || m isa Flux.Dense || throw(ArgumentError(
        "kron needs a Chain of Dense layers and parameter-free functions; got $(summary(m))"))
    layers = _flatlayers(m)
    for (i, l) in enumerate(layers)
        l isa Flux.Dense || isempty(Flux.trainables(l)) || throw(ArgumentError(
            "kron supports Dense layers only; layer $i ($(summary(l))) has parameters"))
    end
    N = size(p.X, 2)
    inputs, a = Matrix{T}[], p.X
    for l in layers
        if l isa Flux.Dense
            a isa AbstractMatrix || throw(DimensionMismatch(
                "kron needs matrix inputs to each Dense layer; got $(summary(a))"))
            push!(inputs, a)
        end
        a = l(a)
    end
    dense = filter(l -> l isa Flux.Dense, collect(layers))
    εs = Tuple(zeros(T, size(l.weight, 1), N) for l in dense)
    Gs = _kron_output_factors(kind, p, layers, εs)
    return [begin
                ā = _hasbias(l) ? vcat(a, ones(T, 1, N)) : a
                (ā * transpose(ā) ./ N, G)
            end for (l, a, G) in zip(dense, inputs, Gs)]
end
