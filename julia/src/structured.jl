#############################################################################
#        Dense chains: per-sample factors, then every block by BLAS         #
#############################################################################
#
# Notation (shared notes, "Curvature of a Dense chain as GEMMs over samples"), per
# sample and Dense layer l = 1 … L: ā_l the layer's input (with a 1 appended when it
# has a bias), z_l its pre-activation, φ_l' and φ_l'' the derivatives of the
# elementwise function after it, δ_l = ∂ℓ/∂z_l, K_l = ∂δ_l/∂z_l, B_l = ∂f/∂z_l.
# θ's block of layer l is [vec(W_l); b_l], entry (p, j) at p + (j - 1)·o_l (the bias
# is column j = n_l + 1), so the block (m, l) of a curvature is
#
#     Σ_n ā_m[j] ā_l[i] K_ml[p, q]                    (K_ml = δδᵀ, BᵀΛB or ∂δ_m/∂z_l)
#   + Σ_n T̄_ml[j, q] δ_m[p] ā_l[i]                    (Hessian, m > l; T̄_ml = ∂ā_m/∂z_l)
#
# Each term is one GEMM over the samples; only the lower triangle is made, then
# mirrored. Samples come in chunks and blocks in panels of rows under a memory budget.
# Every per-sample array keeps the samples last (column-major: one sample contiguous).

"""
    WORKSPACE

Bytes of working memory a P × P route uses beside its result by default (the
`workspace` keyword of [`curvature!`](@ref)): its chunks of samples and panels of rows.
"""
const WORKSPACE = 256 * 2^20

_nparams(dc::DenseChain) = dc.offsets[end] + length(dc.weights[end]) + length(dc.biases[end])
_layers(dc::DenseChain) = eachindex(dc.weights)

# The forward pass of a chunk: ā_l (n̄_l × n), φ_l' (and φ_l'' if asked) for l < L, and z_L.
struct _Forward{T}
    ā::Vector{Matrix{T}}
    d1::Vector{Matrix{T}}
    d2::Vector{Matrix{T}}
    z::Matrix{T}
end

_derivative(φ, x) = ForwardDiff.derivative(φ, x)

# The tag of the outer Dual of `_first_and_second`.
struct _SecondOrder end

# (φ'(x), φ''(x)) from one derivative of φ at a Dual: 6× faster than a derivative of
# the derivative elementwise.
function _first_and_second(φ::F, x::T) where {F,T}
    d = ForwardDiff.derivative(φ, ForwardDiff.Dual{_SecondOrder}(x, one(T)))
    return ForwardDiff.value(d), ForwardDiff.partials(d, 1)
end

# φ(z), φ'(z) and (if asked) φ''(z), elementwise; a function barrier on φ's type.
function _elementwise_derivatives(φ::F, z::Array{T}, second::Bool) where {F,T}
    second || return map(φ, z), map(x -> _derivative(φ, x), z), Matrix{T}(undef, 0, 0)
    d1, d2 = similar(z), similar(z)
    @inbounds for i in eachindex(z)
        d1[i], d2[i] = _first_and_second(φ, z[i])
    end
    return map(φ, z), d1, d2
end

# z = W a (+ b).
function _preactivation(dc::DenseChain, l, a)
    z = dc.weights[l] * a
    dc.hasbias[l] && (z .+= dc.biases[l])
    return z
end

_augmented(dc::DenseChain, l, a::Matrix{T}) where {T} = dc.hasbias[l] ? vcat(a, ones(T, 1, size(a, 2))) : a

function _forward(dc::DenseChain{T}, X::Matrix{T}, second::Bool) where {T}
    a = _inputs(dc, X)
    ā, d1, d2 = Matrix{T}[], Matrix{T}[], Matrix{T}[]
    L = length(dc.weights)
    for l in 1:L-1
        push!(ā, _augmented(dc, l, a))
        a, g1, g2 = _elementwise_derivatives(dc.φ[l], _preactivation(dc, l, a), second)
        push!(d1, g1)
        push!(d2, g2)
    end
    push!(ā, _augmented(dc, L, a))
    return _Forward(ā, d1, d2, _preactivation(dc, L, a))
end

# Y = d1 .* (Wᵀ X) for X (o × r × n): one step of a backward recursion, for r columns per sample.
function _back!(Y::Array{T,3}, W::AbstractMatrix, X::Array{T,3}, d1::AbstractMatrix) where {T}
    o, r, n = size(X)
    mul!(reshape(Y, size(W, 2), r * n), transpose(W), reshape(X, o, r * n))
    return _scale_rows!(Y, d1)
end

# A[i, k, s] *= d[i, s]: each sample's rows scaled (a loop: the broadcast of a reshaped
# matrix is several times slower).
function _scale_rows!(A::AbstractArray{T,3}, d::AbstractMatrix) where {T}
    @inbounds for s in axes(A, 3), k in axes(A, 2)
        @simd for i in axes(A, 1)
            A[i, k, s] *= d[i, s]
        end
    end
    return A
end
_back(W::AbstractMatrix, X::Array{T,3}, d1::AbstractMatrix) where {T} =
    _back!(Array{T,3}(undef, size(W, 2), size(X, 2), size(X, 3)), W, X, d1)

# The per-sample losses of the chunk (a 1 × n row) as a function of z_L.
_head_loss(head, ℓ, Y) = Z -> ℓ(head(Z), Y; agg = _columns)

#------------------------------- factors -----------------------------------#

"""Per-sample factors of a chunk of samples, one type per kind; each holds the forward pass
`fw`. `_factors(kind, dc, X, Y, ℓ, s, scr)` makes them; the Hessian's `K_l` are arrays of
the [`_Scratch`](@ref) `scr`, valid until the next chunk's (the GGN and the EF take none:
`scr` may be `nothing`)."""
abstract type _Factors{T} end

"""The empirical Fisher's: `δ_l` (o_l × n)."""
struct EFFactors{T} <: _Factors{T}
    fw::_Forward{T}
    δ::Vector{Matrix{T}}
end

"""The GGN's: `B_lᵀ` and `s·(Λ B_l)ᵀ` (o_l × C × n)."""
struct GGNFactors{T} <: _Factors{T}
    fw::_Forward{T}
    B::Vector{Array{T,3}}
    ΛB::Vector{Array{T,3}}
end

"""The Hessian's: `s·δ_l` (o_l × n) and `s·K_l` (o_l × o_l × n)."""
struct HessianFactors{T} <: _Factors{T}
    fw::_Forward{T}
    δ::Vector{Matrix{T}}
    K::Vector{Array{T,3}}
end

function _factors(::EmpiricalFisher, dc, X::Matrix{T}, Y, ℓ, s, scr) where {T}
    fw = _forward(dc, X, false)
    return EFFactors{T}(fw, _deltas(dc, fw, columnwise_gradient(_head_loss(dc.head, ℓ, Y), fw.z)))
end

function _deltas(dc, fw, δL)
    δ = Vector{typeof(δL)}(undef, length(dc.weights))
    δ[end] = δL
    for l in length(dc.weights)-1:-1:1
        δ[l] = fw.d1[l] .* (transpose(dc.weights[l+1]) * δ[l+1])
    end
    return δ
end

function _factors(::Hessian, dc, X::Matrix{T}, Y, ℓ, s, scr) where {T}
    fw = _forward(dc, X, true)
    u = _head_loss(dc.head, ℓ, Y)
    L, n = length(dc.weights), size(X, 2)
    δ = _deltas(dc, fw, s .* columnwise_gradient(u, fw.z))
    K = Vector{Array{T,3}}(undef, L)
    K[L] = s .* columnwise_hessian(u, fw.z)
    for l in L-1:-1:1
        W = dc.weights[l+1]
        o, m = size(W)
        WK = _take(scr, :WK, m, o, n)
        mul!(reshape(WK, m, o * n), transpose(W), reshape(K[l+1], o, o * n))   # Wᵀ K_n
        KW = permutedims!(_take(scr, :KW, o, m, n), WK, (2, 1, 3))            # K_n W (K_n symmetric)
        Kl = _take(scr, (:K, l), m, m, n)
        mul!(reshape(Kl, m, m * n), transpose(W), reshape(KW, o, m * n))      # Wᵀ K_n W
        d1, g = fw.d1[l], transpose(W) * δ[l+1]                               # g = ∂(sℓ)/∂a_{l+1}
        d2 = fw.d2[l]
        @inbounds for j in 1:n, b in 1:m                                    # φ' K φ' + diag(φ'' g)
            db = d1[b, j]
            @simd for a in 1:m
                Kl[a, b, j] *= d1[a, j] * db
            end
            Kl[b, b, j] += d2[b, j] * g[b, j]
        end
        K[l] = Kl
    end
    return HessianFactors{T}(fw, δ, K)
end

# B_lᵀ (o_l × C × n) for every layer, from B_L = ∂head/∂z_L.
function _output_jacobians(dc, fw::_Forward{T}) where {T}
    B = Vector{Array{T,3}}(undef, length(dc.weights))
    B[end] = permutedims(columnwise_jacobian(dc.head, fw.z), (2, 1, 3))
    for l in length(dc.weights)-1:-1:1
        B[l] = _back(dc.weights[l+1], B[l+1], fw.d1[l])
    end
    return B
end

function _factors(::GGN, dc, X::Matrix{T}, Y, ℓ, s, scr) where {T}
    fw = _forward(dc, X, false)
    B = _output_jacobians(dc, fw)
    F = dc.head(fw.z)
    Λ = columnwise_hessian(F -> ℓ(F, Y; agg = _columns), F)                 # C × C × n
    ΛB = similar(B)
    ΛB[end] = similar(B[end])
    for j in axes(Λ, 3)
        mul!(view(ΛB[end], :, :, j), view(B[end], :, :, j), view(Λ, :, :, j), s, false)
    end
    for l in length(dc.weights)-1:-1:1
        ΛB[l] = _back(dc.weights[l+1], ΛB[l+1], fw.d1[l])
    end
    return GGNFactors{T}(fw, B, ΛB)
end

# The block factor K_ml (o_m × o_l × n) of layers m ≥ l (off the diagonal in `scr`).
function _block_factor(F::HessianFactors, dc, m, l, scr)
    m == l && return F.K[m]
    C = _cross(F, dc, m, l, scr)
    return permutedims!(_take(scr, :Kml, size(C, 2), size(C, 1), size(C, 3)), C, (2, 1, 3))
end

# K_mlᵀ = (K_m J_ml)ᵀ, J_ml = ∂z_m/∂z_l, right to left from K_m (symmetric), in `scr`.
function _cross(F, dc, m, l, scr)
    Y, which = F.K[m], false
    for k in m:-1:l+1
        W = dc.weights[k]
        Y = _back!(_take(scr, (:cross, which), size(W, 2), size(Y, 2), size(Y, 3)), W, Y, F.fw.d1[k-1])
        which = !which
    end
    return Y
end

function _block_factor(F::GGNFactors{T}, dc, m, l, scr) where {T}
    Bm, ΛBl = F.B[m], F.ΛB[l]
    K = _take(scr, :Kml, size(Bm, 1), size(ΛBl, 1), size(Bm, 3))
    for j in axes(K, 3)
        mul!(view(K, :, :, j), view(Bm, :, :, j), transpose(view(ΛBl, :, :, j)))
    end
    return K
end

# T̄_ml without its zero bias row (n_m × o_l × n), for m > l + 1: ∂a_m/∂z_l, in `scr`.
function _input_sensitivity(F, dc, m, l, scr)
    d1 = F.fw.d1
    n, W, which = size(d1[l], 2), dc.weights[l+1], false
    S = _take(scr, (:sensitivity, which), size(W)..., n)
    @inbounds for s in 1:n, j in axes(W, 2)                            # ∂z_{l+1}/∂z_l
        b = d1[l][j, s]
        @simd for i in axes(W, 1)
            S[i, j, s] = W[i, j] * b
        end
    end
    for k in l+1:m-2
        o, r = size(S, 1), size(S, 2)
        _scale_rows!(S, d1[k])
        which = !which
        next = _take(scr, (:sensitivity, which), size(dc.weights[k+1], 1), r, n)
        mul!(reshape(next, :, r * n), dc.weights[k+1], reshape(S, o, r * n))
        S = next
    end
    return _scale_rows!(S, d1[m-1])
end

#------------------------------- assembly ----------------------------------#

# H[row(p, j), col(q, i)] (+)= S[p, q, j, i]: rows (p, j) of layer m from row j0, columns (q, i) of layer l.
function _scatter!(H, S, offm, j0, offl, add::Bool)
    om, ol, nj, ni = size(S)
    @inbounds for i in 1:ni, q in 1:ol
        col = offl + q + (i - 1) * ol
        for j in 1:nj
            row = offm + (j0 + j - 2) * om
            if add
                @simd for p in 1:om
                    H[row+p, col] += S[p, q, j, i]
                end
            else
                @simd for p in 1:om
                    H[row+p, col] = S[p, q, j, i]
                end
            end
        end
    end
end

# A[i, j, s] = x[i, s]·y[j, s]: per sample s the outer product of the columns (a loop: the
# broadcast of reshaped views is 8× slower).
function _outer!(A::AbstractArray{T,3}, x::AbstractMatrix, y::AbstractMatrix) where {T}
    @inbounds for s in axes(A, 3), j in axes(A, 2)
        b = y[j, s]
        @simd for i in axes(A, 1)
            A[i, j, s] = x[i, s] * b
        end
    end
    return A
end

# Rows per panel of block (m, l) so that each panel's temporaries fit `budget`.
_panel_rows(om, ol, n̄l, n, budget, ::Type{T}) where {T} =
    max(1, min(budget ÷ (sizeof(T) * om * ol * n̄l), budget ÷ (sizeof(T) * n̄l * n)))

# The first term of block (m, l), rows j0:j1 of ā_m; on the diagonal only columns i ≤ j1.
function _first_term!(H, F, dc, K, m, l, j0, j1, add, scr)
    ām, āl = F.fw.ā[m], F.fw.ā[l]
    om, ol, n = size(K)
    cols = m == l ? j1 : size(āl, 1)
    jn = j1 - j0 + 1
    A = _outer!(_take(scr, :A, jn, cols, n), view(ām, j0:j1, :), view(āl, 1:cols, :))
    S = _take(scr, :S, om * ol, jn * cols)
    mul!(S, reshape(K, om * ol, n), transpose(reshape(A, jn * cols, n)))
    _scatter!(H, reshape(S, om, ol, jn, cols), dc.offsets[m], j0, dc.offsets[l], add)
end

# The Hessian's second term of block (m > l), rows j0:j1 of ā_m (the bias row adds nothing).
function _second_term!(H, F::HessianFactors, dc, Tml, m, l, j0, j1, scr)
    āl, δm = F.fw.ā[l], F.δ[m]
    j1 = min(j1, size(dc.weights[m], 2))
    j1 < j0 && return
    om, n̄l, n = size(δm, 1), size(āl, 1), size(δm, 2)
    ol = size(dc.weights[l], 1)
    jn = j1 - j0 + 1
    offm, offl = dc.offsets[m], dc.offsets[l]
    if m == l + 1   # T̄_ml[j, q] = φ_l'[j] when q == j
        D = _outer!(_take(scr, :A, om, jn, n), δm, view(F.fw.d1[l], j0:j1, :))
        S = reshape(_take(scr, :S, om * jn, n̄l), om, jn, n̄l)
        mul!(reshape(S, om * jn, n̄l), reshape(D, om * jn, n), transpose(āl))
        @inbounds for i in 1:n̄l, j in 1:jn
            col = offl + (j0 + j - 1) + (i - 1) * ol
            row = offm + (j0 + j - 2) * om
            @simd for p in 1:om
                H[row+p, col] += S[p, j, i]
            end
        end
    else
        R = _outer!(_take(scr, :A, om, n̄l, n), δm, āl)
        S = _take(scr, :S, om * n̄l, jn * ol)
        Tp = reshape(_take(scr, :T, jn, ol, n), jn * ol, n)
        copyto!(reshape(Tp, jn, ol, n), view(Tml, j0:j1, :, :))
        mul!(S, reshape(R, om * n̄l, n), transpose(Tp))
        S4 = reshape(S, om, n̄l, jn, ol)
        @inbounds for i in 1:n̄l, q in 1:ol
            col = offl + q + (i - 1) * ol
            for j in 1:jn
                row = offm + (j0 + j - 2) * om
                @simd for p in 1:om
                    H[row+p, col] += S4[p, i, j, q]
                end
            end
        end
    end
end
_second_term!(H, F, dc, Tml, m, l, j0, j1, scr) = nothing

_needs_sensitivity(::HessianFactors, m, l) = m > l + 1
_needs_sensitivity(F, m, l) = false

# Add (or write, `add = false`) one chunk's lower triangle of blocks into H.
function _assemble!(H::AbstractMatrix{T}, F::_Factors, dc::DenseChain, add::Bool, budget, scr) where {T}
    n = size(F.fw.z, 2)
    for m in _layers(dc), l in 1:m
        K = _block_factor(F, dc, m, l, scr)
        Tml = _needs_sensitivity(F, m, l) ? _input_sensitivity(F, dc, m, l, scr) : nothing
        om, ol = size(K, 1), size(K, 2)
        n̄m, n̄l = size(F.fw.ā[m], 1), size(F.fw.ā[l], 1)
        step = _panel_rows(om, ol, n̄l, n, budget, T)
        for j0 in 1:step:n̄m
            j1 = min(j0 + step - 1, n̄m)
            _first_term!(H, F, dc, K, m, l, j0, j1, add, scr)
            m > l && _second_term!(H, F, dc, Tml, m, l, j0, j1, scr)
        end
    end
end

# Copy the lower triangle onto the upper one, tile by tile.
function _mirror_lower!(H::AbstractMatrix)
    P = size(H, 1)
    b = 64
    @inbounds for c0 in 1:b:P, r0 in c0:b:P
        for r in r0:min(r0 + b - 1, P)                 # the writes down a column
            for c in c0:min(c0 + b - 1, P, r - 1)
                H[c, r] = H[r, c]
            end
        end
    end
    return H
end

# Bytes of one sample's factors (and one block's), to size the chunks of samples.
function _bytes_per_sample(kind::Kind, dc::DenseChain, C, ::Type{T}) where {T}
    o = [size(W, 1) for W in dc.weights]
    n̄ = [size(W, 2) + b for (W, b) in zip(dc.weights, dc.hasbias)]
    return sizeof(T) * (sum(n̄) + 3 * sum(o) + _factor_floats(kind, dc, o, n̄, C))
end

# Floats per sample of a kind's own factors (and of one block of them). The Hessian's: K_l,
# and beside them the larger of what the recursion for K_l holds (Wᵀ K, K W, Wᵀ K W) and
# what a block holds (K_ml and its transpose; T̄_ml and the product it is made from).
_factor_floats(::Hessian, dc, o, n̄, C) = sum(abs2, o) + max(3 * maximum(o)^2, 2 * maximum(o)^2 + 2 * maximum(n̄) * maximum(o))
_factor_floats(::GGN, dc, o, n̄, C) = 2 * C * sum(o) + maximum(o)^2 + C * C
_factor_floats(::EmpiricalFisher, dc, o, n̄, C) = _nparams(dc)

function _sample_chunks(N, per_sample, budget)
    n = clamp(budget ÷ max(per_sample, 1), 1, N)
    return [a:min(a + n - 1, N) for a in 1:n:N]
end

"""
    curvature_into!(H, kind, dc::DenseChain, p::Problem, workspace) -> H

The structured route, into `H` (`P × P`): one chunk of samples at a time, its factors,
then the lower triangle of every block by GEMMs, mirrored at the end. Half of
`workspace` bytes holds a chunk's factors (each chunk more adds every block into H once
more), an eighth each panel's temporaries (three buffers).
"""
function curvature_into!(H::AbstractMatrix{T}, kind::Union{Hessian,GGN}, dc::DenseChain, p::Problem{T}, workspace) where {T}
    N, C = size(p.X, 2), size(p.Y, 1)
    _with_scratch(T) do scr
        _each_chunk(_sample_chunks(N, _bytes_per_sample(kind, dc, C, T), workspace ÷ 2), workspace ÷ 2; paused = false) do cols, add
            F = _factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s, scr)
            _assemble!(H, F, dc, add, workspace ÷ 8, scr)
        end
    end
    return _mirror_lower!(H)
end

"""Working memory of a chunk of samples where no `P × P` result sets it (diagonals, KFAC)."""
const FACTOR_CHUNK_BYTES = 64 * 2^20

"""
    _each_chunk(f, chunks, budget; paused = true)

`f(cols, add)` for each chunk of samples (`add`: not the first), the garbage collector
paused while the chunks run: a quick collection runs between two chunks once they have
allocated `budget` bytes since the last one, when all they made is garbage.

A collection in the middle of a chunk finds its arrays alive and promotes them; they
then die old, and only full collections free them: 0.3–0.4 s each in the Julia that
Python starts, every few calls, more than a small call's own work (the benchmarks' CNN,
N = 500, KFAC-GGN from Python, 15 calls in each of three processes: medians 0.27–0.50 s
and calls up to 1.08 s; paused, 0.24–0.31 s and at most 0.35 s). Paused, the chunks'
garbage waits for the next collection: at most `budget` bytes beyond a chunk's own.

`paused = false` (the Dense P × P routes, whose chunks are half the workspace): the
collector runs as usual, and a quick collection between any two chunks frees what a chunk
left on the heap (its forward pass; its factors are in a [`_Scratch`](@ref)) before the
next one runs.
"""
function _each_chunk(f, chunks, budget; paused::Bool = true)
    running = paused ? GC.enable(false) : true
    try
        since = Base.gc_bytes()
        for (c, cols) in enumerate(chunks)
            f(cols, c > 1)
            if c < length(chunks) && (!paused || Base.gc_bytes() - since > budget)
                paused && GC.enable(true)
                GC.gc(false)
                paused && GC.enable(false)
                since = Base.gc_bytes()
            end
        end
    finally
        paused && GC.enable(running)
    end
end

# Rows per panel of the empirical Fisher's Gram matrix.
const GRAM_PANEL = 512

function curvature_into!(H::AbstractMatrix{T}, kind::EmpiricalFisher, dc::DenseChain, p::Problem{T}, workspace) where {T}
    N, C = size(p.X, 2), size(p.Y, 1)
    _with_scratch(T) do scr
        _each_chunk(_sample_chunks(N, _bytes_per_sample(kind, dc, C, T), workspace), workspace; paused = false) do cols, add
            F = _factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s, scr)
            _gram!(H, _sample_gradient_rows(dc, F, scr), p.s, add)
        end
    end
    return _mirror_lower!(H)
end

# G (n × P, in `scr`): row n is sample n's gradient g_n, g_n's block of layer l is vec(δ_l ā_lᵀ).
function _sample_gradient_rows(dc, F::EFFactors{T}, scr) where {T}
    n = size(F.fw.z, 2)
    G = _take(scr, :rows, n, _nparams(dc))
    for (l, off) in enumerate(dc.offsets)
        δt, āt = permutedims(F.δ[l]), permutedims(F.fw.ā[l])
        o = size(δt, 2)
        @inbounds for j in axes(āt, 2), p in 1:o
            col = off + p + (j - 1) * o
            @simd for r in 1:n
                G[r, col] = δt[r, p] * āt[r, j]
            end
        end
    end
    return G
end

# The lower triangle of H (+)= s·GᵀG, by row panels of GEMMs.
function _gram!(H, G, s, add::Bool)
    P = size(G, 2)
    for r0 in 1:GRAM_PANEL:P
        r1 = min(r0 + GRAM_PANEL - 1, P)
        mul!(view(H, r0:r1, 1:r1), transpose(view(G, :, r0:r1)), view(G, :, 1:r1), s, add)
    end
end

#----------------------- gradient, diagonals, KFAC, Jacobians -------------#

function gradient_of(dc::DenseChain, p::Problem{T}) where {T}
    F = _factors(EmpiricalFisher(), dc, p.X, p.Y, p.ℓ, p.s, nothing)        # takes no scratch
    g = Vector{T}(undef, length(p.θ))
    for (l, off) in enumerate(dc.offsets)
        block = F.δ[l] * transpose(F.fw.ā[l])                                # o_l × n̄_l
        g[off+1:off+length(block)] .= p.s .* vec(block)
    end
    return g
end


# diag of K_l per sample (o_l × n).
_own_diagonal(F::HessianFactors, l) = [F.K[l][i, i, j] for i in axes(F.K[l], 1), j in axes(F.K[l], 3)]
_own_diagonal(F::GGNFactors, l) = dropdims(sum(F.B[l] .* F.ΛB[l]; dims = 2); dims = 2)
_own_diagonal(F::EFFactors, l) = abs2.(F.δ[l])

# The factor s that a kind's own factors leave out (the EF's δ are unscaled).
_own_scale(::EmpiricalFisher, s) = s
_own_scale(::Kind, s) = one(s)

"""
    diagonal_of(kind, dc::DenseChain, p) -> (P,)

Per layer `Σ_n diag(K_l) ⊗ ā_l²` (the Hessian's second term has no diagonal entries).
"""
function diagonal_of(kind::Kind, dc::DenseChain, p::Problem{T}) where {T}
    N, C = size(p.X, 2), size(p.Y, 1)
    d = zeros(T, length(p.θ))
    chunks = _sample_chunks(N, 2 * _bytes_per_sample(kind, dc, C, T), FACTOR_CHUNK_BYTES)
    _with_scratch(T) do scr
        _each_chunk(chunks, FACTOR_CHUNK_BYTES) do cols, _
            F = _factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s, scr)
            for (l, off) in enumerate(dc.offsets)
                block = _own_diagonal(F, l) * transpose(abs2.(F.fw.ā[l]))      # o_l × n̄_l
                block .*= _own_scale(kind, p.s)
                view(d, off+1:off+length(block)) .+= vec(block)
            end
        end
    end
    return d
end

_own_sum(F::GGNFactors, l) = (o = size(F.B[l], 1); reshape(F.B[l], o, :) * transpose(reshape(F.ΛB[l], o, :)))
_own_sum(F::EFFactors, l) = F.δ[l] * transpose(F.δ[l])

"""
    kron_of(kind, dc::DenseChain, p) -> [(A, G)]

KFAC factors per Dense layer: `A = Σ_n ā ā ᵀ / N`, `G = s·Σ_n K_l` (δδᵀ for the EF, BᵀΛB for the GGN).
"""
function kron_of(kind::Union{GGN,EmpiricalFisher}, dc::DenseChain, p::Problem{T}) where {T}
    N, C = size(p.X, 2), size(p.Y, 1)
    A = [zeros(T, size(ā, 1), size(ā, 1)) for ā in _forward(dc, p.X[:, 1:1], false).ā]
    G = [zeros(T, size(W, 1), size(W, 1)) for W in dc.weights]
    chunks = _sample_chunks(N, 2 * _bytes_per_sample(kind, dc, C, T), FACTOR_CHUNK_BYTES)
    _each_chunk(chunks, FACTOR_CHUNK_BYTES) do cols, _
        F = _factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s, nothing)  # GGN, EF: no scratch
        for l in _layers(dc)
            mul!(A[l], F.fw.ā[l], transpose(F.fw.ā[l]), one(T) / N, one(T))
            G[l] .+= _own_sum(F, l)
        end
    end
    s = _own_scale(kind, p.s)
    return [(a, s .* (g .+ transpose(g)) ./ 2) for (a, g) in zip(A, G)]
end

"""
    _param_jacobian(dc::DenseChain, X) -> (N, C, P)

`J_n[c, (p, j)] = B_l[c, p] ā_l[j]` from the output Jacobians `B_l = ∂f/∂z_l`.
"""
function _param_jacobian(dc::DenseChain, X::Matrix{T}) where {T}
    fw = _forward(dc, X, false)
    B = _output_jacobians(dc, fw)
    N, C = size(X, 2), size(B[end], 2)
    J = Array{T}(undef, N, C, _nparams(dc))
    for (l, off) in enumerate(dc.offsets)
        o, ā = size(B[l], 1), fw.ā[l]
        @inbounds for j in axes(ā, 1), p in 1:o, c in 1:C
            col = off + p + (j - 1) * o
            @simd for n in 1:N
                J[n, c, col] = B[l][p, c, n] * ā[j, n]
            end
        end
    end
    return J
end
