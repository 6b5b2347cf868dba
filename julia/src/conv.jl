#############################################################################
#     Convolutional chains: per-sample rows on unfolded patches, by BLAS     #
#############################################################################
#
# Every layer with parameters is a *tap*, linear in them through its unfolded input:
# `z = W ⋆ a + b` (Conv, CrossCor) or `z = W a + b` (Dense). Unfold the tap's input of
# one sample into its patches U (`S × K` for a convolution: one row per output position
# s, K = kernel × input channels in the order of the weight's own entries, what
# `NNlib.unfold` gives; a Dense layer has `U = a`, one position per column beyond the
# first dimension). For a per-sample derivative D = ∂(·)/∂z (`S × O`), the weight part
# of ∂(·)/∂θ is `Uᵀ D` (`K × O`, θ's order for a kernel `(k…, cin, cout)`; a Dense
# weight `(out, in)` is `D Uᵀ`) and the bias part `Σ_s D[s, :]`. One batched forward
# pass and one backward pass in z, `R` cotangents per sample at once, give R rows
# `r_{n,i} = ∂(e_iᵀ f_n)/∂θ` per sample n:
#
# - GGN: seeds the columns of `L_n`, `s·Λ_n = L_n L_nᵀ` (R = C): GGN = Σ r rᵀ;
# - empirical Fisher: the seed `∇_f ℓ_n` (R = 1): EF = s·Σ r rᵀ;
# - param_jacobian: seeds `e_c` (R = C).
#
# The P × P matrices are the Gram matrices of the rows (one SYRK per chunk of samples),
# the diagonals the sums of the rows' squares, KFAC the factors of the KFC "expand"
# convention. The exact Hessian adds to the GGN the cross terms of the taps and each curved
# elementwise stage's own term (below). The JAX engine's twin is `fluxhess._backends.jax.conv`.

"""
    ConvChain

A Chain seen as `before` (parameter-free layers that only transform the data), then
its taps: `taps[m]` is a Conv, CrossCor or Dense layer (θ offset `offsets[m]`) and
`after[m]` the stages up to the next tap (its activation, then parameter-free layers
that act on each sample alone: elementwise functions, pools, `Flux.flatten`, softmax),
the last tap's ending in the `C × N` output.
"""
struct ConvChain
    before::Vector{Any}
    taps::Vector{Any}
    after::Vector{Vector{Any}}
    offsets::Vector{Int}
end

const _ConvLayer = Union{Flux.Conv,Flux.CrossCor}
const _MaxPoolLayer = Union{Flux.MaxPool,Flux.AdaptiveMaxPool,Flux.GlobalMaxPool}
const _PoolLayer = Union{_MaxPoolLayer,Flux.MeanPool,Flux.AdaptiveMeanPool,Flux.GlobalMeanPool}

# The taps: layers linear in their parameters through their unfolded inputs.
_istap(l) = false
_istap(::Union{_ConvLayer,Flux.Dense}) = true

_hasbias(l::_ConvLayer) = l.bias isa AbstractArray
_tapsize(l) = length(l.weight) + (_hasbias(l) ? length(l.bias) : 0)

"""An elementwise function as a stage: `φ.(a)`, its backward `D .* φ'.(a)`."""
struct _Act{F}
    φ::F
end

"""A parameter-free layer that acts on each sample alone, its backward by its own pullback."""
struct _Layer{L}
    layer::L
end

# The stage of a parameter-free layer, or nothing when the route does not know it.
_stage(l) = nothing
_stage(l::Base.Fix1{typeof(broadcast)}) = _Act(l.x)
_stage(l::_PoolLayer) = _Layer(l)
_stage(l::Union{typeof(Flux.flatten),typeof(Flux.softmax),typeof(Flux.logsoftmax),typeof(identity)}) = _Layer(l)
_stage(l::Flux.Dropout) = l.active === false ? _Layer(identity) : nothing   # test mode: the identity

# A tap's activation as its first stage.
_activation_stages(::typeof(identity)) = Any[]
_activation_stages(σ) = Any[_Act(σ)]

"""
    _conv_route(model) -> ConvChain or nothing

The convolutional route when `model`'s parameters are exactly its taps' weights and
biases (each once, in Chain order) and every layer after the first tap is a tap or a
stage the route knows: `stage(l)` (by default [`_stage`](@ref)) is not `nothing`.
"""
function _conv_route(model, stage = _stage)
    before, taps, after = Any[], Any[], Vector{Any}[]
    for l in _flatlayers(model)
        if _istap(l)
            push!(taps, l)
            push!(after, _activation_stages(l.σ))
        elseif !isempty(Flux.trainables(l))
            return nothing
        elseif isempty(taps)
            push!(before, l)
        else
            st = stage(l)
            st === nothing && return nothing
            push!(after[end], st)
        end
    end
    isempty(taps) && return nothing
    θ = first(Flux.destructure(model))
    T = eltype(θ)
    arrays = [a for l in taps for a in (l.weight, l.bias) if a isa AbstractArray]
    all(a -> a isa Array{T}, arrays) || return nothing
    length(unique(objectid, arrays)) == length(arrays) || return nothing
    sum(_tapsize, taps) == length(θ) || return nothing
    offsets = cumsum([0; [_tapsize(l) for l in taps[1:end-1]]])
    return ConvChain(before, taps, after, offsets)
end

# Parameter-free layers the convolutional route does not know.
_unknown_stage(l) = !_istap(l) && isempty(Flux.trainables(l)) && _stage(l) === nothing

# The convolutional route of `model` on the batch `X`, each unknown layer after the first tap
# an elementwise stage `_Act(_AsScalar(l))` where it acts as that on its input from `X`
# (see `route(model, X)`); or nothing.
function _conv_route_on(model, X::AbstractMatrix)
    any(_unknown_stage, _flatlayers(model)) || return nothing
    cc = _conv_route(model, l -> _unknown_stage(l) ? _Act(_AsScalar(l)) : _stage(l))
    return cc !== nothing && _scalar_on(model, X, _unknown_stage) ? cc : nothing
end

runner(::ConvChain, m) = m

_nparams(cc::ConvChain) = cc.offsets[end] + _tapsize(cc.taps[end])

#------------------------------ the forward pass ----------------------------#

# The layer's convolution dimensions: Flux's `conv_dims`/`crosscor_dims`, for the batch `a`.
_cdims(l::Flux.Conv, a) = NNlib.DenseConvDims(a, l.weight; stride = l.stride, padding = l.pad,
                                              dilation = l.dilation, groups = l.groups)
_cdims(l::Flux.CrossCor, a) = NNlib.DenseConvDims(a, l.weight; stride = l.stride, padding = l.pad,
                                                  dilation = l.dilation, flipkernel = true)

_groups(l::Flux.Conv) = l.groups
_groups(::Flux.CrossCor) = 1

_bias_shape(l::_ConvLayer, N) = (ntuple(_ -> 1, N - 2)..., length(l.bias), 1)

# z of a tap for the batch a.
function _affine(l::_ConvLayer, a)
    z = NNlib.conv(a, l.weight, _cdims(l, a))
    _hasbias(l) && (z .+= reshape(l.bias, _bias_shape(l, ndims(z))))
    return z
end
function _affine(l::Flux.Dense, a)
    z = reshape(l.weight * reshape(a, size(a, 1), :), :, size(a)[2:end]...)
    _hasbias(l) && (z .+= l.bias)
    return z
end

# z of a tap from its input `a` and its patches `U` (`_patches`): a convolution by one
# GEMM per sample, `U_j W`, what NNlib's im2col convolution does after unfolding `a`
# again (groups > 1: NNlib's convolution); Dense as above.
function _affine(l::_ConvLayer, a, U::AbstractArray{T,3}) where {T}
    _groups(l) == 1 || return _affine(l, a)
    S, K, n = size(U)
    O = _out_channels(l)
    W = reshape(l.weight, K, O)
    z = Array{T}(undef, S, O, n)
    for j in 1:n
        mul!(view(z, :, :, j), view(U, :, :, j), W)
    end
    z = reshape(z, NNlib.output_size(_cdims(l, a))..., O, n)
    _hasbias(l) && (z .+= reshape(l.bias, _bias_shape(l, ndims(z))))
    return z
end
_affine(l::Flux.Dense, a, U) = _affine(l, a)

# Derivatives flowing back through a stage, for `R` cotangents per sample: `D` holds
# them along its last dimension, sample j's i-th at `j + (i - 1)·n`. A stage's backward
# pass (`_backward(b, D, scr, name)`) writes into `D` itself or into `scr`'s array `name`.
struct _ActBack{A,X}
    d1::A
    input::X
end
struct _PullBack{B}
    back::B
    insize::Tuple
end

_stage_forward(st::_Act, a) = map(st.φ, a), _ActBack(map(x -> _derivative(st.φ, x), a), a)
function _stage_forward(st::_Layer, a)
    out, back = Zygote.pullback(st.layer, a)
    return out, _PullBack(back, size(a))
end

"""`Flux.flatten`'s backward pass: the cotangents reshaped back (no copy: a pullback per
cotangent of a sample took half the Hessian's cross terms of a Dense tap on a flattened
convolution)."""
struct _ReshapeBack
    insize::Tuple
end

_stage_forward(::_Layer{typeof(Flux.flatten)}, a) = Flux.flatten(a), _ReshapeBack(size(a))
_backward(b::_ReshapeBack, D, scr, name) = reshape(D, b.insize[1:end-1]..., size(D, ndims(D)))

"""
A max pool's backward pass for a chunk: input entry `x` of sample `j` takes the
cotangent of output entry `source[x, j]` (0: of none), the entry whose window chose it.
"""
struct _SelectBack
    source::Matrix{Int32}
    insize::Tuple
end

# A ConvDims tuple of the spatial dimensions as three (the missing ones `fill`).
_three(t, fill) = ntuple(i -> i <= length(t) ? t[i] : fill, 3)

# The windows of a convolution or pool (`NNlib.ConvDims`) in three spatial dimensions:
# the input and output sizes, the kernel, stride, dilation and padding before each.
function _windows(dims)
    pad = NNlib.padding(dims)                                         # (w_lo, w_hi, h_lo, …)
    return _three(NNlib.input_size(dims), 1), _three(NNlib.output_size(dims), 1), _three(NNlib.kernel_size(dims), 1),
           _three(NNlib.stride(dims), 1), _three(NNlib.dilation(dims), 1), ntuple(i -> 2i - 1 <= length(pad) ? pad[2i-1] : 0, 3)
end

# A max pool's choices, read off its own pullback (NNlib's choice at ties): the pullback of
# the outputs' labels `1:per` names at each input entry the window that chose it. Where
# windows share a chosen entry (its label a sum, some window's label then missing) or
# `per` is past the integers `T` holds, the stage keeps its pullback.
_stage_forward(st::_Layer{<:_MaxPoolLayer}, a::AbstractArray) = _pullback_choices(st, a)

function _pullback_choices(st, a::AbstractArray{T}) where {T}
    out, back = Zygote.pullback(st.layer, a)
    n = size(a, ndims(a))
    per = length(out) ÷ n
    per < min(maxintfloat(T), typemax(Int32)) || return out, _PullBack(back, size(a))
    labels = back(repeat(reshape(T.(1:per), size(out)[1:end-1]..., 1), ntuple(_ -> 1, ndims(out) - 1)..., n))[1]
    source = reshape(Int32.(min.(labels, per + 1)), :, n)
    _chooses_each_window_once(source, per) || return out, _PullBack(back, size(a))
    return out, _SelectBack(source, size(a))
end

# Flux's MaxPool, its windows scanned directly: the first entry of the maximum in NNlib's
# order (its pullback's choice at ties); its pullback's way where two windows choose one
# entry or a window lies in the padding.
function _stage_forward(st::_Layer{<:Flux.MaxPool}, a::AbstractArray{T}) where {T}
    l = st.layer
    pdims = NNlib.PoolDims(a, l.k; padding = l.pad, stride = l.stride)
    chosen = _max_choices(a, pdims)
    chosen === nothing && return _pullback_choices(st, a)
    out, source = chosen
    return out, _SelectBack(source, size(a))
end

"""
    _max_choices(a, pdims) -> (out, source) or nothing

The max pool of `a` and its choices (as [`_SelectBack`](@ref)'s `source`), each window's
first entry of its maximum in the order of NNlib's pullback (kernel width fastest);
`nothing` where a window has no entry inside `a` or two windows choose one entry.
"""
function _max_choices(a::AbstractArray{T,N}, pdims) where {T,N}
    Wi, Wo, Kk, st, dl, lo = _windows(pdims)
    C, n = size(a, N - 1), size(a, N)
    prod(Wo) * C < typemax(Int32) || return nothing
    x = reshape(a, Wi..., C, n)
    out = Array{T}(undef, Wo..., C, n)
    source = zeros(Int32, prod(Wi) * C, n)
    lin = LinearIndices((Wi..., C))
    @inbounds for j in 1:n, c in 1:C, d in 1:Wo[3], h in 1:Wo[2], w in 1:Wo[1]
        best, at = typemin(T), 0
        for kd in 1:Kk[3], kh in 1:Kk[2], kw in 1:Kk[1]
            id = (d - 1) * st[3] - lo[3] + 1 + (kd - 1) * dl[3]
            ih = (h - 1) * st[2] - lo[2] + 1 + (kh - 1) * dl[2]
            iw = (w - 1) * st[1] - lo[1] + 1 + (kw - 1) * dl[1]
            (1 <= iw <= Wi[1] && 1 <= ih <= Wi[2] && 1 <= id <= Wi[3]) || continue
            v = x[iw, ih, id, c, j]
            if at == 0 || v > best
                best, at = v, lin[iw, ih, id, c]
            end
        end
        (at == 0 || source[at, j] != 0) && return nothing
        out[w, h, d, c, j] = best
        source[at, j] = w + (h - 1) * Wo[1] + (d - 1) * Wo[1] * Wo[2] + (c - 1) * prod(Wo)
    end
    return reshape(out, NNlib.output_size(pdims)..., C, n), source
end

function _chooses_each_window_once(source, per)
    seen = zeros(Int, per + 1)
    for j in axes(source, 2)
        fill!(seen, 0)
        for o in view(source, :, j)
            o > 0 && (seen[o] += 1)
        end
        all(isone, view(seen, 1:per)) && seen[per+1] == 0 || return false
    end
    return true
end

function _backward(b::_SelectBack, D::AbstractArray{T}, scr, name) where {T}
    n = size(b.source, 2)
    Dm = reshape(D, :, size(D, ndims(D)))
    out = _take(scr, name, size(b.source, 1), size(Dm, 2))
    @inbounds for c in axes(Dm, 2)
        j = mod1(c, n)
        for x in axes(b.source, 1)
            o = b.source[x, j]
            out[x, c] = o == 0 ? zero(T) : Dm[o, c]
        end
    end
    return reshape(out, b.insize[1:end-1]..., size(Dm, 2))
end

function _backward(b::_ActBack, D, scr, name)
    d1, Dv = vec(b.d1), vec(D)                 # sample j's i-th cotangent at j + (i - 1)·n
    per = length(d1)
    @inbounds for i in 0:length(Dv) ÷ per - 1, x in 1:per
        Dv[i * per + x] *= d1[x]
    end
    return D
end

function _backward(b::_PullBack, D::AbstractArray{T}, scr, name) where {T}
    n = b.insize[end]
    R = size(D, ndims(D)) ÷ n
    out = _take(scr, name, b.insize[1:end-1]..., n * R)
    for i in 1:R
        cols = (i-1)*n+1:i*n
        dx = b.back(selectdim(D, ndims(D), cols))[1]
        selectdim(out, ndims(out), cols) .= something(dx, zero(T))
    end
    return out
end

# The cotangent of a tap's input from that of its z, in `scr`'s array `name`.
function _input_cotangent(l::_ConvLayer, a, D, scr, name)
    dx = _take(scr, name, size(a)[1:end-1]..., size(D, ndims(D)))
    return NNlib.∇conv_data!(dx, D, l.weight, _cdims(l, a))
end
function _input_cotangent(l::Flux.Dense, a, D, scr, name)
    dx = _take(scr, name, size(a)[1:end-1]..., size(D, ndims(D)))
    mul!(reshape(dx, size(l.weight, 2), :), transpose(l.weight), reshape(D, size(D, 1), :))
    return dx
end

"""The forward pass of a chunk of `n` samples: each tap's input and its patches
([`_patches`](@ref), z made from them), its stages' backward data, the `C × n` output."""
struct _ConvForward{T}
    inputs::Vector{Any}
    patches::Vector{Any}
    backs::Vector{Vector{Any}}
    out::Matrix{T}
end

function _forward(cc::ConvChain, X::Matrix{T}) where {T}
    a = foldl((a, l) -> l(a), cc.before; init = X)
    inputs, patches, backs = Any[], Any[], Vector{Any}[]
    for (l, stages) in zip(cc.taps, cc.after)
        U = _patches(l, a)
        push!(inputs, a)
        push!(patches, U)
        a = _affine(l, a, U)
        bs = Any[]
        for st in stages
            a, b = _stage_forward(st, a)
            push!(bs, b)
        end
        push!(backs, bs)
    end
    a isa AbstractMatrix && size(a, 2) == size(X, 2) || throw(DimensionMismatch(
        "the model must map a d × N batch to a C × N matrix; got $(summary(a))"))
    return _ConvForward{T}(inputs, patches, backs, Matrix{T}(a))
end

"""
    _derivatives(cc, fw, E, last, scr; stages, seen) -> [D_m for m in 1:last]

`D_m = ∂(E-weighted outputs)/∂z_m` for the taps up to `last`, from the cotangents `E` of
the output of tap `last`'s first `stages` stages (all of them by default: the model's
output `C × n·R`, or the next tap's input, its shape with `n·R` samples), sample j's i-th
at `j + (i - 1)·n` of the last dimension, by one backward pass. `seen(m, i, D)` is
called with the cotangent `D` of the output of tap m's stage i before it is pulled back
through it (and overwritten). `E` is overwritten; the `D_m` are `E` or arrays of the
[`_Scratch`](@ref) `scr`, valid until its next use (a loop over chunks of samples passes
one `scr` to reuse their memory).
"""
function _derivatives(cc::ConvChain, fw::_ConvForward{T}, E::AbstractArray, last, scr;
                      stages = length(fw.backs[last]), seen = Returns(nothing)) where {T}
    Ds = Vector{Any}(undef, last)
    D = E
    for m in last:-1:1
        backs = fw.backs[m]
        for i in (m == last ? stages : length(backs)):-1:1
            seen(m, i, D)
            D = _backward(backs[i], D, scr, (:stage, m, i))
        end
        Ds[m] = D
        m > 1 && (D = _input_cotangent(cc.taps[m], fw.inputs[m], D, scr, (:cotangent, m)))
    end
    return Ds
end

#---------------------------- per-sample rows in θ --------------------------#

# U: a convolution's patches `(S, K, n)` over all input channels, in the kernel's own order
# (`NNlib.unfold`, the layer's flip); a Dense layer's input as `(K, S, n)`.
_patches(l::_ConvLayer, a) = _unfold(a, NNlib.DenseConvDims(_cdims(l, a); G = 1))
_patches(l::Flux.Dense, a) = reshape(a, size(a, 1), :, size(a, ndims(a)))

"""
    _unfold(a, cdims) -> U (S, K, n)

`NNlib.unfold(a, cdims)`: each sample's patches, one row per output position, the
columns in the kernel's order of `cdims`'s flip, by one loop over the batch. NNlib's
unfolds each sample by a call of its own whose setup (the padded regions, a 3-d view
of the sample and of `cdims`) costs more than the copy for the small images of a CNN's
later layers.
"""
function _unfold(a::AbstractArray{T,N}, cdims::NNlib.DenseConvDims) where {T,N}
    Wi, Wo, Kk, st, dl, lo = _windows(cdims)
    C, n = size(a, N - 1), size(a, N)
    x = reshape(a, Wi..., C, n)
    flip = NNlib.flipkernel(cdims)
    U = Array{T}(undef, prod(Wo), prod(Kk) * C, n)
    U8 = reshape(U, Wo..., Kk..., C, n)
    @inbounds for j in 1:n, c in 1:C, kd in 1:Kk[3], kh in 1:Kk[2], kw in 1:Kk[1]
        fw, fh, fd = flip ? (kw, kh, kd) : (Kk[1] - kw + 1, Kk[2] - kh + 1, Kk[3] - kd + 1)
        for d in 1:Wo[3], h in 1:Wo[2]
            id = (d - 1) * st[3] - lo[3] + 1 + (kd - 1) * dl[3]
            ih = (h - 1) * st[2] - lo[2] + 1 + (kh - 1) * dl[2]
            inside = 1 <= id <= Wi[3] && 1 <= ih <= Wi[2]
            for w in 1:Wo[1]
                iw = (w - 1) * st[1] - lo[1] + 1 + (kw - 1) * dl[1]
                U8[w, h, d, fw, fh, fd, c, j] = inside && 1 <= iw <= Wi[1] ? x[iw, ih, id, c, j] : zero(T)
            end
        end
    end
    return U
end

# D in z as `(S, O, n·R)` (convolution) or `(O, S, n·R)` (Dense).
_flat_derivative(l::_ConvLayer, D) = reshape(D, :, size(D, ndims(D) - 1), size(D, ndims(D)))
_flat_derivative(l::Flux.Dense, D) = reshape(D, size(D, 1), :, size(D, ndims(D)))

"""
    _tap_gradient!(g, layer, U, D, j, b)

`g` (`|θ_tap|`, θ's order) = the tap's part of row `b` (a column of `D`), sample `j`:
the weight block `Uⱼᵀ D_b` per group (Dense: `D_b Uⱼᵀ`), then `Σ_s D_b` for the bias.
"""
function _tap_gradient!(g, l::_ConvLayer, U, D, j, b)
    K, O, G = size(U, 2), size(D, 2), _groups(l)
    Kg, Og = K ÷ G, O ÷ G
    Uj, Db = view(U, :, :, j), view(D, :, :, b)
    for gi in 1:G
        block = reshape(view(g, (gi-1)*Kg*Og+1:gi*Kg*Og), Kg, Og)
        mul!(block, transpose(view(Uj, :, (gi-1)*Kg+1:gi*Kg)), view(Db, :, (gi-1)*Og+1:gi*Og))
    end
    _bias_part!(g, l, K * O ÷ G, Db)
    return g
end

function _tap_gradient!(g, l::Flux.Dense, U, D, j, b)
    K, O = size(U, 1), size(D, 1)
    Db = view(D, :, :, b)
    mul!(reshape(view(g, 1:O*K), O, K), Db, transpose(view(U, :, :, j)))
    _bias_part!(g, l, O * K, Db)
    return g
end

# g[w+1:w+O] = Db summed over the positions (its rows for a convolution, columns for
# Dense), when the layer has a bias.
function _bias_part!(g, l::_ConvLayer, w, Db)
    _hasbias(l) && sum!(reshape(view(g, w+1:w+size(Db, 2)), 1, :), Db)
end
function _bias_part!(g, l::Flux.Dense, w, Db)
    _hasbias(l) && sum!(view(g, w+1:w+size(Db, 1)), Db)
end

# Each tap's patches and flattened derivatives of a chunk (the taps `Ds` reaches).
function _tap_data(cc::ConvChain, fw, Ds)
    return [(l, cc.offsets[m], fw.patches[m], _flat_derivative(l, D))
            for (m, (l, D)) in enumerate(zip(cc.taps, Ds))]
end

"""
    _rows(cc, fw, E, scr) -> Gt (P × n·R)

Column `j + (i - 1)·n` is `∂(E[:, j + (i - 1)·n]ᵀ f_j)/∂θ` (`E` overwritten), an array of
`scr` as [`_derivatives`](@ref)'s are.
"""
function _rows(cc::ConvChain, fw::_ConvForward{T}, E::Matrix{T}, scr) where {T}
    n, nR = size(fw.out, 2), size(E, 2)
    Gt = _take(scr, :rows, _nparams(cc), nR)
    for (l, off, U, D) in _tap_data(cc, fw, _derivatives(cc, fw, E, length(cc.taps), scr))
        k = _tapsize(l)
        for b in 1:nR
            _tap_gradient!(view(Gt, off+1:off+k, b), l, U, D, mod1(b, n), b)
        end
    end
    return Gt
end

#---------------------------------- seeds -----------------------------------#

# The per-sample losses of the chunk (a 1 × n row) as a function of the outputs.
_output_loss(ℓ, Y) = F -> ℓ(F, Y; agg = _columns)

"""`E` (`C × n·C`): sample j's columns are `L_j`, `s·Λ_j = L_j L_jᵀ` (Λ is positive semi-definite: rounding clipped)."""
function _loss_roots(F::Matrix{T}, Y, ℓ, s) where {T}
    C, n = size(F)
    Λ = columnwise_hessian(_output_loss(ℓ, Y), F)
    E = Matrix{T}(undef, C, n * C)
    for j in 1:n
        λ, Q = LinearAlgebra.eigen(LinearAlgebra.Symmetric(view(Λ, :, :, j)))
        for i in 1:C
            view(E, :, j + (i - 1) * n) .= view(Q, :, i) .* sqrt(max(s * λ[i], zero(T)))
        end
    end
    return E
end

"""`E` (`C × n·C`): the unit vectors, sample j's i-th column `e_i`."""
function _unit_seeds(::Type{T}, C, n) where {T}
    E = zeros(T, C, n * C)
    for i in 1:C, j in 1:n
        E[i, j + (i - 1) * n] = one(T)
    end
    return E
end

# Per kind: the seeds of a chunk, and the factor the Gram matrix of its rows carries.
_seeds(::GGN, fw, Y, ℓ, s) = _loss_roots(fw.out, Y, ℓ, s)
_seeds(::EmpiricalFisher, fw, Y, ℓ, s) = columnwise_gradient(_output_loss(ℓ, Y), fw.out)
_gram_scale(::GGN, s) = one(s)
_gram_scale(::EmpiricalFisher, s) = s

_seeds_per_sample(::GGN, C) = C
_seeds_per_sample(::EmpiricalFisher, C) = 1

#------------------------- memory: chunks of samples -------------------------#

"""
    _conv_bytes_per_sample(cc, X, R) -> bytes

One sample's working memory with `R` seeds: its `R` rows of θ, and per tap its input,
patches and `R + 4` arrays the size of z (the stages' data with an activation's input, a
max pool's choices and the derivatives), the sizes read from a forward pass of the first
sample.
"""
function _conv_bytes_per_sample(cc::ConvChain, X::Matrix{T}, R) where {T}
    fw = _forward(cc, X[:, 1:1])
    floats = _nparams(cc) * R
    for (m, l) in enumerate(cc.taps)
        a = fw.inputs[m]
        floats += 2 * length(a) + length(_patches(l, a)) + (R + 4) * length(_affine(l, a))
    end
    return sizeof(T) * floats
end

function _conv_chunks(cc::ConvChain, p::Problem{T}, R, budget) where {T}
    return _sample_chunks(size(p.X, 2), _conv_bytes_per_sample(cc, p.X, R), budget)
end

#-------------------------------- the quantities -----------------------------#

"""
    curvature_into!(H, kind, cc::ConvChain, p, workspace) -> H

GGN and empirical Fisher: the lower triangle of the Gram matrix of the rows
(`_gram_lower!`), mirrored.
"""
curvature_into!(H::AbstractMatrix{T}, kind::Union{GGN,EmpiricalFisher}, cc::ConvChain, p::Problem{T}, workspace) where {T} =
    _mirror_lower!(_gram_lower!(H, kind, cc, p, workspace))

"""
    _gram_lower!(H, kind, cc, p, workspace) -> H

Per chunk of samples (its rows within `workspace` bytes) the lower triangle of
`H (+)= c·Gt Gtᵀ` by one SYRK into `H` (`P × P`); the upper triangle is left as it was.
"""
function _gram_lower!(H::AbstractMatrix{T}, kind::Union{GGN,EmpiricalFisher}, cc::ConvChain,
                      p::Problem{T}, workspace) where {T}
    R = _seeds_per_sample(kind, size(p.Y, 1))
    _with_scratch(T) do scr
        _each_chunk(_conv_chunks(cc, p, R, workspace), workspace) do cols, add
            fw = _forward(cc, p.X[:, cols])
            Gt = _rows(cc, fw, _seeds(kind, fw, p.Y[:, cols], p.ℓ, p.s), scr)
            LinearAlgebra.BLAS.syrk!('L', 'N', _gram_scale(kind, p.s), Gt, T(add), H)
        end
    end
    return H
end

gradient_of(::ConvChain, p::Problem) = gradient_of(Generic(), p)

"""
    diagonal_of(kind, cc::ConvChain, p) -> (P,)

The sums over samples and seeds of the rows' squares, one tap's part of a row at a time
(no P-long rows are kept).
"""
function diagonal_of(kind::Union{GGN,EmpiricalFisher}, cc::ConvChain, p::Problem{T}) where {T}
    d = zeros(T, _nparams(cc))
    R = _seeds_per_sample(kind, size(p.Y, 1))
    _with_scratch(T) do scr
        _each_chunk(_conv_chunks(cc, p, R, FACTOR_CHUNK_BYTES), FACTOR_CHUNK_BYTES) do cols, _
            fw = _forward(cc, p.X[:, cols])
            Ds = _derivatives(cc, fw, _seeds(kind, fw, p.Y[:, cols], p.ℓ, p.s), length(cc.taps), scr)
            n = length(cols)
            for (l, off, U, D) in _tap_data(cc, fw, Ds)
                g = Vector{T}(undef, _tapsize(l))
                dl = view(d, off+1:off+length(g))
                for b in axes(D, 3)
                    dl .+= abs2.(_tap_gradient!(g, l, U, D, mod1(b, n), b))
                end
            end
        end
    end
    return d .*= _gram_scale(kind, p.s)
end

# The rows of a tap's input from its patches `U` (`_patches`), one per position and
# sample: a convolution's (`S·n × K`, in the kernel's θ order, in `scr`'s array `name`),
# a Dense layer's (`K × S·n`, transposed).
function _patch_rows(l::_ConvLayer, U, scr, name)
    S, K, n = size(U)
    return reshape(permutedims!(_take(scr, name, S, n, K), U, (1, 3, 2)), S * n, K)
end
_patch_rows(l::Flux.Dense, U, scr, name) = reshape(U, size(U, 1), :)

# Σ over samples and positions of ū ūᵀ, `ū` a row (`_patch_rows`) with a 1 appended for
# a bias: one SYRK, the bias row and column from the rows' sum.
function _input_factor!(A, l::_ConvLayer, Ū::AbstractMatrix{T}) where {T}
    K = size(Ū, 2)
    mul!(view(A, 1:K, 1:K), transpose(Ū), Ū, one(T), one(T))
    return _bias_factor!(A, l, vec(sum(Ū; dims = 1)), size(Ū, 1))
end
function _input_factor!(A, l::Flux.Dense, Ū::AbstractMatrix{T}) where {T}
    K = size(Ū, 1)
    mul!(view(A, 1:K, 1:K), Ū, transpose(Ū), one(T), one(T))
    return _bias_factor!(A, l, vec(sum(Ū; dims = 2)), size(Ū, 2))
end

# The bias row and column of A: `u` the sum of the rows, `count` how many there are.
function _bias_factor!(A, l, u, count)
    _hasbias(l) || return A
    K = length(u)
    view(A, 1:K, K + 1) .+= u
    view(A, K + 1, 1:K) .+= u
    A[K+1, K+1] += count
    return A
end

# Σ over seeds, samples and positions of D_s D_sᵀ (a convolution's D channels first in
# `scr`'s array `name`).
function _output_factor!(G, l::_ConvLayer, D::AbstractArray{T}, scr, name) where {T}
    Dp = permutedims!(_take(scr, name, size(D, 2), size(D, 1), size(D, 3)), D, (2, 1, 3))
    return mul!(G, reshape(Dp, size(D, 2), :), transpose(reshape(Dp, size(D, 2), :)), one(T), one(T))
end
function _output_factor!(G, l::Flux.Dense, D::AbstractArray{T}, scr, name) where {T}
    Df = reshape(D, size(D, 1), :)
    return mul!(G, Df, transpose(Df), one(T), one(T))
end

# Positions of a tap per sample, from its rows for `n` samples.
_positions(l::_ConvLayer, Ū, n) = size(Ū, 1) ÷ n
_positions(l::Flux.Dense, Ū, n) = size(Ū, 2) ÷ n

_patch_width(l::_ConvLayer) = prod(size(l.weight)[1:end-2]) * size(l.weight, ndims(l.weight) - 1)
_patch_width(l::Flux.Dense) = size(l.weight, 2)
_out_channels(l::_ConvLayer) = size(l.weight, ndims(l.weight))
_out_channels(l::Flux.Dense) = size(l.weight, 1)

_check_factored(l) = nothing
_check_factored(l::Flux.Conv) = l.groups == 1 || throw(ArgumentError(
    "KFAC has no single input factor A for a grouped convolution; got $(summary(l)) with groups = $(l.groups)"))

"""
    kron_of(kind, cc::ConvChain, p) -> [(A, G)]

KFAC per tap, the KFC "expand" convention: `A = Σ_n Σ_s ū ūᵀ / (N·S)` (`(K+1, K+1)`,
the patch in the kernel's θ order, `[u; 1]` with a bias) and `G = Σ_n Σ_s Σ_i D D ᵀ`
over the positions and seeds (`s·δδᵀ` for the EF, `Bᵀ (sΛ) B` for the GGN).
"""
function kron_of(kind::Union{GGN,EmpiricalFisher}, cc::ConvChain, p::Problem{T}) where {T}
    foreach(_check_factored, cc.taps)
    N = size(p.X, 2)
    A = [zeros(T, _patch_width(l) + _hasbias(l), _patch_width(l) + _hasbias(l)) for l in cc.taps]
    G = [zeros(T, _out_channels(l), _out_channels(l)) for l in cc.taps]
    positions = zeros(Int, length(cc.taps))
    R = _seeds_per_sample(kind, size(p.Y, 1))
    _with_scratch(T) do scr
        _each_chunk(_conv_chunks(cc, p, R, FACTOR_CHUNK_BYTES), FACTOR_CHUNK_BYTES) do cols, _
            fw = _forward(cc, p.X[:, cols])
            Ds = _derivatives(cc, fw, _seeds(kind, fw, p.Y[:, cols], p.ℓ, p.s), length(cc.taps), scr)
            for (m, l) in enumerate(cc.taps)
                rows = _patch_rows(l, fw.patches[m], scr, (:patch_rows, m))
                _input_factor!(A[m], l, rows)
                _output_factor!(G[m], l, _flat_derivative(l, Ds[m]), scr, (:channels_first, m))
                positions[m] = _positions(l, rows, length(cols))
            end
        end
    end
    c = _gram_scale(kind, p.s)
    return [(a ./ (N * S), c .* (g .+ transpose(g)) ./ 2) for (a, g, S) in zip(A, G, positions)]
end

param_jacobian_of(cc::ConvChain, at::ModelAt, X) = _param_jacobian(cc, X)

"""
    _param_jacobian(cc::ConvChain, X) -> (N, C, P)

The rows of the unit seeds: `J_n[c, :] = ∂f_c(x_n)/∂θ`.
"""
function _param_jacobian(cc::ConvChain, X::Matrix{T}) where {T}
    fw = _forward(cc, X)
    C, N = size(fw.out)
    return _with_scratch(T) do scr
        permutedims(reshape(_rows(cc, fw, _unit_seeds(T, C, N), scr), :, N, C), (2, 3, 1))
    end
end

#------------ the exact Hessian: the GGN, the cross terms, the curved stages ------------#
#
# Beside the loss's curvature (the GGN) and the curved stages' own (below), the network's
# second-order terms are those of each tap being bilinear in its weight and its input,
# `z_m = W_m ⋆ a_m(θ_{<m})`: for taps l < m the block
#
#     H[W_m, θ_l] = GGN[W_m, θ_l] + T_ml,   T_ml[(k, o), q] = Σ_n Σ_s δ_m[s, o] ∂U_m[s, k]/∂θ_l[q]
#
# with δ_m = ∂(sℓ)/∂z_m (U_m tap m's patches). `∂a_m/∂θ_l` is the Jacobian `∂a_m/∂z_l`
# (the unit cotangents of a sample of a_m, pulled back, all samples at once) times tap
# l's patches, batched GEMMs; unfolding it by tap m and contracting with δ_m is one GEMM
# (Dense) or one weight gradient of a convolution (`NNlib.∇conv_filter`, the `|θ_l|`
# columns as channels). T has no entries on the diagonal blocks: it adds nothing to the
# Hessian's diagonal. A curved elementwise stage (tanh, σ, softplus …) adds a term of
# its own (below); chains with other stages (softmax …) keep the generic route.
# The JAX engine's twin of T is `fluxhess._backends.jax.conv._cross`.

# Whether a stage is piecewise linear in its input.
_piecewise_linear(st) = false
_piecewise_linear(::_Act{<:Union{typeof(identity),typeof(NNlib.relu),typeof(NNlib.leakyrelu)}}) = true
_piecewise_linear(::_Layer{<:Union{_PoolLayer,typeof(Flux.flatten),typeof(identity)}}) = true

"""
    curvature_into!(H, ::Hessian, cc::ConvChain, p, workspace) -> H

The GGN's lower triangle, then `T_ml` added below the diagonal for every pair of taps
l < m and each curved stage's own term ([`_add_curvature_term!`](@ref)), mirrored, when
every stage is piecewise linear or elementwise; the generic route's otherwise.
"""
function curvature_into!(H::AbstractMatrix{T}, kind::Hessian, cc::ConvChain, p::Problem{T}, workspace) where {T}
    _hessian_known(cc) || return curvature_into!(H, kind, Generic(), p, workspace)
    _gram_lower!(H, GGN(), cc, p, workspace)
    _on_one_blas_thread() do
        for m in 2:length(cc.taps)
            _add_cross_terms!(H, cc, m, p, workspace)
        end
    end
    for (k, j) in _curved_stages(cc)
        _add_curvature_term!(H, cc, k, j, p, workspace)
    end
    return _mirror_lower!(H)
end

"""
    _on_one_blas_thread(f)

`f()` with BLAS on one thread, then its threads as they were. The cross terms are
thousands of GEMMs per chunk of a few hundred thousand multiply-adds each (per sample
and channel, and NNlib's per-sample convolutions), just above the size where OpenBLAS
splits a GEMM among its threads: in Float32 the hand-off then costs more than the
product (the benchmarks' CNN, N = 500, 2 cores: the Hessian 11.4 s on two threads,
6.4 s with its cross terms on one; in Float64 the same either way).
"""
function _on_one_blas_thread(f)
    threads = LinearAlgebra.BLAS.get_num_threads()
    threads == 1 && return f()
    LinearAlgebra.BLAS.set_num_threads(1)
    try
        return f()
    finally
        LinearAlgebra.BLAS.set_num_threads(threads)
    end
end

"""
    diagonal_of(::Hessian, cc::ConvChain, p) -> (P,)

The GGN's diagonal plus each curved stage's (`T_ml` has none), when every stage is
piecewise linear or elementwise; the generic route's otherwise.
"""
function diagonal_of(kind::Hessian, cc::ConvChain, p::Problem)
    _hessian_known(cc) || return diagonal_of(kind, Generic(), p)
    d = diagonal_of(GGN(), cc, p)
    for (k, j) in _curved_stages(cc)
        _add_curvature_term!(d, cc, k, j, p, FACTOR_CHUNK_BYTES)
    end
    return d
end

"""
    _unit_cotangents(a, scr) -> E

The unit cotangents of the entries of each sample of the batch `a` (`…, n`), `r` =
`length(a) ÷ n` per sample: `E` (`…, n·r`), sample j's i-th `e_i` at `j + (i - 1)·n`, an
array of `scr`.
"""
function _unit_cotangents(a::AbstractArray{T}, scr) where {T}
    n = size(a, ndims(a))
    r = length(a) ÷ n
    E = fill!(_take(scr, :unit_cotangents, r, n, r), zero(T))
    for i in 1:r, j in 1:n
        E[i, j, i] = one(T)
    end
    return reshape(E, size(a)[1:end-1]..., n * r)
end

"""
    _sample_rows(l, U, D, r) -> J (r, |θ_l|, n)

`J[i, :, j] = ∂(·)/∂θ_l` of sample j's i-th derivative: `D` in tap l's z (`(S, O, n·r)`
for a convolution, `(O, S, n·r)` for Dense, sample j's i-th at `j + (i - 1)·n`) and its
patches `U` (`_patches`), θ_l's order (`_tap_gradient!`), one GEMM per sample and output
channel (convolution) or per sample (Dense).
"""
function _sample_rows(l::_ConvLayer, U::AbstractArray{T}, D, r) where {T}
    S, O = size(D, 1), size(D, 2)
    n = size(D, 3) ÷ r
    Kg, Og = size(U, 2) ÷ _groups(l), O ÷ _groups(l)
    D4 = reshape(D, S, O, n, r)
    J = Array{T}(undef, r, _tapsize(l), n)
    ones_S = ones(T, S)
    for j in 1:n, o in 1:O
        Djo = transpose(view(D4, :, o, j, :))                                 # (r, S), strided: no copy
        k0 = ((o - 1) ÷ Og) * Kg                                              # its group's channels
        mul!(view(J, :, (o-1)*Kg+1:o*Kg, j), Djo, view(U, :, k0+1:k0+Kg, j))
        _hasbias(l) && mul!(view(J, :, Kg*O+o, j), Djo, ones_S)
    end
    return J
end

function _sample_rows(l::Flux.Dense, U::AbstractArray{T}, D, r) where {T}
    O, S = size(D, 1), size(D, 2)
    n = size(D, 3) ÷ r
    K = size(U, 1)
    Dp = permutedims(reshape(D, O, S, n, r), (4, 1, 2, 3))                   # (r, O, S, n)
    J = Array{T}(undef, r, _tapsize(l), n)
    for j in 1:n
        Dj = reshape(view(Dp, :, :, :, j), r * O, S)
        mul!(reshape(view(J, :, 1:O*K, j), r * O, K), Dj, transpose(view(U, :, :, j)))
        _hasbias(l) && sum!(reshape(view(J, :, O*K+1:O*K+O, j), r * O, 1), Dj)
    end
    return J
end

"""
    _unfolded_against(m, a, J, δ) -> T (|W_m|, q)

`T[(k, o), c] = Σ_n Σ_s δ[s, o, n] U(J[:, c, n])[s, k]`: the columns of `J` (`(r, q, n)`,
derivatives of tap m's input `a`, `r` = a sample's entries) unfolded by tap m and
contracted with `δ = ∂(sℓ)/∂z_m` (z_m's shape), rows in W_m's θ order. A Dense tap is
one GEMM; a convolution the weight gradient of the convolution of `J`'s `q·cin` channels
(a grouped one keeps each output's own group of channels).
"""
function _unfolded_against(l::Flux.Dense, a, J, δ)
    K, n, q = size(a, 1), size(a, ndims(a)), size(J, 2)
    S, O = size(J, 1) ÷ K, size(l.weight, 1)
    Jk = S == 1 ? reshape(J, K * q, n) :
        reshape(permutedims(reshape(J, K, S, q, n), (1, 3, 2, 4)), K * q, S * n)
    return reshape(reshape(δ, O, S * n) * transpose(Jk), O * K, q)
end

function _unfolded_against(l::_ConvLayer, a, J::AbstractArray{T}, δ) where {T}
    cin, q = size(a, ndims(a) - 1), size(J, 2)
    images = reshape(J, size(a)[1:end-2]..., cin * q, size(a, ndims(a)))
    cdims = NNlib.DenseConvDims(_cdims(l, a); C_in = cin * q, G = 1)
    k, O, G = prod(size(l.weight)[1:end-2]), size(l.weight, ndims(l.weight)), _groups(l)
    dW = reshape(NNlib.∇conv_filter(images, δ, cdims), k, cin, q, O)
    cg, og = cin ÷ G, O ÷ G
    Tm = Array{T}(undef, k, cg, O, q)
    for g in 0:G-1
        Tm[:, :, g*og+1:(g+1)*og, :] .= permutedims(view(dW, :, g*cg+1:(g+1)*cg, :, g*og+1:(g+1)*og), (1, 2, 4, 3))
    end
    return reshape(Tm, k * cg * O, q)
end

#------------- adjacent taps: each entry of a tap's input on one channel -------------#
#
# The stages between taps m - 1 and m (elementwise functions, pools, `flatten`, the
# identity) act channel by channel, so entry i of a sample of tap m's input
# depends on one channel c(i) of z_{m-1} only. Tap m - 1's rows for the cotangent of entry
# i are then zero outside θ_{m-1}'s channel c(i), its `Kb` = kernel × input channels (+ a
# bias) entries, and `T_{m,m-1}` is zero outside those columns: of each row the route
# computes the `Kb` entries, a |θ_{m-1}| / Kb-th of the products and memory (1/16 and
# 1/32 for the benchmarks' CNN).

"""
    _ChannelBlocks

For the entries of one sample of tap m's input, those on each channel c of z_{m-1}:
`ranges[c]`, contiguous (entries on no channel are in none).
"""
struct _ChannelBlocks
    ranges::Vector{UnitRange{Int}}
end

_apply(st::_Act, a) = st.φ.(a)
_apply(st::_Layer, a) = st.layer(a)

# The dimension of z that holds a tap's channels.
_channel_dim(::_ConvLayer, z) = ndims(z) - 1
_channel_dim(::Flux.Dense, z) = 1

"""
    _channel_blocks(cc, fw, m) -> _ChannelBlocks or nothing

The channel of z_{m-1} each entry of tap m's input depends on, read off the stages between
them applied to the indicator of each channel (one sample, `fw` a forward pass holding one);
`nothing` where an entry depends on two channels, a channel's entries are not contiguous,
or tap m cannot use them: a convolution whose input channel is not that channel, a Dense
tap on more than a feature dimension.
"""
function _channel_blocks(cc::ConvChain, fw::_ConvForward, m)
    a = fw.inputs[m]
    channel = _entry_channels(cc.taps[m-1], fw.inputs[m-1], cc.after[m-1])
    channel === nothing && return nothing
    length(channel) == length(a) && _takes_channels(cc.taps[m], a, channel) || return nothing
    return _contiguous_blocks(channel, _out_channels(cc.taps[m-1]))
end

"""
    _entry_channels(l, a, stages) -> channel or nothing

For each entry of one sample of `stages` applied to tap l's z (`a` its input, one
sample) the channel of z it depends on (0: none), read off the stages applied to the
indicator of each channel, at two values (an elementwise φ may take the same value at 0
and at one of them); `nothing` where an entry depends on two channels.
"""
function _entry_channels(l, a::AbstractArray{T}, stages) where {T}
    z = _affine(l, a)
    d, O = _channel_dim(l, z), size(z, _channel_dim(l, z))
    through(Z) = reshape(foldl((x, st) -> _apply(st, x), stages; init = Z), :, O)
    Z = zeros(T, size(z)[1:end-1]..., O)
    for c in 1:O
        selectdim(selectdim(Z, ndims(Z), c), d, c) .= one(T)
    end
    at0 = through(zero(Z))
    on = (through(Z) .!= at0) .| (through(T(-0.5) .* Z) .!= at0)
    channel = zeros(Int, size(on, 1))
    for i in axes(on, 1)
        cs = findall(view(on, i, :))
        length(cs) > 1 && return nothing
        channel[i] = isempty(cs) ? 0 : only(cs)
    end
    return channel
end

# The entries of each of `O` channels as contiguous ranges, or nothing where they are not.
function _contiguous_blocks(channel, O)
    ranges = UnitRange{Int}[]
    for c in 1:O
        at = findall(==(c), channel)
        isempty(at) || at == first(at):last(at) || return nothing
        push!(ranges, isempty(at) ? (1:0) : (first(at):last(at)))
    end
    return _ChannelBlocks(ranges)
end

# Whether tap m can take its input's entries by channel: a Dense tap on features alone, a
# convolution whose input channel of each entry is the channel it depends on.
_takes_channels(::Flux.Dense, a, channel) = ndims(a) == 2
function _takes_channels(::_ConvLayer, a, channel)
    per = length(a) ÷ size(a, ndims(a) - 1)
    return all(i -> channel[i] in (0, (i - 1) ÷ per + 1), eachindex(channel))
end

# θ_l's entries of output channel c: the weights (kernel × the group's input channels, or a
# Dense row), then the bias.
_channel_width(l) = length(l.weight) ÷ _out_channels(l) + _hasbias(l)
function _channel_column(l::_ConvLayer, c, k)
    Kg = length(l.weight) ÷ _out_channels(l)
    return k <= Kg ? (c - 1) * Kg + k : Kg * _out_channels(l) + c
end
function _channel_column(l::Flux.Dense, c, k)
    O, K = size(l.weight)
    return k <= K ? c + (k - 1) * O : O * K + c
end

"""
    _channel_rows(l, U, D, r, blocks, scr) -> Jc (r, Kb, n)

`Jc[i, k, j]` = the `k`-th entry of θ_l's channel c(i) ([`_channel_column`](@ref)) in the
row of sample j's i-th derivative (`D`, `U` as for [`_sample_rows`](@ref)): one GEMM per
sample and channel for a convolution, a loop for Dense. Entries on no channel have zero
rows. An array of `scr`.
"""
function _channel_rows(l::_ConvLayer, U::AbstractArray{T}, D, r, blocks, scr) where {T}
    S, O = size(D, 1), size(D, 2)
    n = size(D, 3) ÷ r
    Kg, Og = size(U, 2) ÷ _groups(l), O ÷ _groups(l)
    D4 = reshape(D, S, O, n, r)
    Jc = fill!(_take(scr, :channel_rows, r, _channel_width(l), n), zero(T))
    ones_S = ones(T, S)
    for j in 1:n, (o, I) in enumerate(blocks.ranges)
        isempty(I) && continue
        Djo = transpose(view(D4, :, o, j, I))                                 # (|I|, S)
        k0 = ((o - 1) ÷ Og) * Kg
        mul!(view(Jc, I, 1:Kg, j), Djo, view(U, :, k0+1:k0+Kg, j))
        _hasbias(l) && mul!(view(Jc, I, Kg + 1, j), Djo, ones_S)
    end
    return Jc
end

function _channel_rows(l::Flux.Dense, U::AbstractArray{T}, D, r, blocks, scr) where {T}
    O, S = size(D, 1), size(D, 2)
    n = size(D, 3) ÷ r
    K = size(U, 1)
    D4 = reshape(D, O, S, n, r)
    Jc = fill!(_take(scr, :channel_rows, r, _channel_width(l), n), zero(T))
    @inbounds for j in 1:n, (c, I) in enumerate(blocks.ranges), i in I, s in 1:S
        d = D4[c, s, j, i]
        for k in 1:K
            Jc[i, k, j] += d * U[k, s, j]
        end
        _hasbias(l) && (Jc[i, K + 1, j] += d)
    end
    return Jc
end

"""
    _add_channel_cross!(H, tap, l, om, ol, a, Jc, δ, blocks)

`H[W_m, θ_l] += T_ml` for `tap` m and the tap l = m - 1 before it (θ offsets `om`, `ol`)
from l's rows by channel (`Jc`, [`_channel_rows`](@ref)) and `δ = ∂(sℓ)/∂z_m`, as
[`_unfolded_against`](@ref) does for all of θ_l's columns: a Dense tap by one GEMM, a
convolution by the weight gradient of a convolution of `Jc`'s `Kb·cin` channels.
"""
function _add_channel_cross!(H, tap::Flux.Dense, l, om, ol, a, Jc, δ, blocks)
    r, Kb, n = size(Jc)
    O = _out_channels(tap)
    Tc = reshape(reshape(δ, O, n) * transpose(reshape(Jc, r * Kb, n)), O, r, Kb)
    @inbounds for (c, I) in enumerate(blocks.ranges), k in 1:Kb
        q = ol + _channel_column(l, c, k)
        for i in I, o in 1:O
            H[om + o + (i - 1) * O, q] += Tc[o, i, k]
        end
    end
    return H
end

function _add_channel_cross!(H, tap::_ConvLayer, l, om, ol, a, Jc, δ, blocks)
    r, Kb, n = size(Jc)
    O, cin = _out_channels(tap), size(a, ndims(a) - 1)
    images = reshape(permutedims(reshape(Jc, r ÷ cin, cin, Kb, n), (1, 3, 2, 4)), size(a)[1:end-2]..., Kb * cin, n)
    cdims = NNlib.DenseConvDims(_cdims(tap, a); C_in = Kb * cin, G = 1)
    ks = prod(size(tap.weight)[1:end-2])
    dW = reshape(NNlib.∇conv_filter(images, δ, cdims), ks, Kb, cin, O)
    cg, og = cin ÷ _groups(tap), O ÷ _groups(tap)
    @inbounds for o in 1:O, c in 1:cin
        cgi = c - ((o - 1) ÷ og) * cg                          # c within o's group of inputs
        1 <= cgi <= cg || continue
        for k in 1:Kb
            q = ol + _channel_column(l, c, k)
            for s in 1:ks
                H[om + s + (cgi - 1) * ks + (o - 1) * ks * cg, q] += dW[s, k, c, o]
            end
        end
    end
    return H
end

"""
    _cross_bytes_per_sample(cc, fw, m, blocks) -> bytes

One sample's working memory for tap m's cross terms, `r` = a sample's entries of tap m's
input: the `r` unit cotangents, per earlier tap their derivatives (its input's and
z's size, three times) and its rows (twice: `|θ_l|` entries each, the channel's
[`_channel_width`](@ref) for tap m - 1 when `blocks` are known), every tap's patches, the
sizes read from `fw`, a forward pass of one sample.
"""
function _cross_bytes_per_sample(cc::ConvChain, fw::_ConvForward{T}, m, blocks) where {T}
    r = length(fw.inputs[m])
    floats = r * r + length(fw.inputs[m]) + sum(length, fw.patches)
    for (k, (l, a)) in enumerate(zip(cc.taps[1:m-1], fw.inputs))
        width = k == m - 1 && blocks !== nothing ? _channel_width(l) : _tapsize(l)
        floats += r * (2 * length(a) + 3 * length(_affine(l, a)) + 2 * width)
    end
    return sizeof(T) * floats
end

"""
    _add_cross_terms!(H, cc, m, p, workspace)

`H[W_m, θ_l] += T_ml` (below the diagonal) for every tap l < m, over chunks of
samples within `workspace` bytes less the blocks `T_ml` (three of the largest: the
weight gradient, its reordering and the result) and a convolution's unfolded input for
its weight gradient.
"""
function _add_cross_terms!(H::AbstractMatrix{T}, cc::ConvChain, m, p::Problem{T}, workspace) where {T}
    tap = cc.taps[m]
    fw1 = _forward(cc, p.X[:, 1:1])
    blocks = _channel_blocks(cc, fw1, m)
    widest = maximum(_tapsize, cc.taps[1:m-1])
    budget = max(workspace - sizeof(T) * (3 * length(tap.weight) * widest + _unfolded_floats(tap, fw1.patches[m], widest)), 0)
    chunks = _sample_chunks(size(p.X, 2), _cross_bytes_per_sample(cc, fw1, m, blocks), budget)
    _with_scratch(T) do scr_δ                                   # δ is kept while Ds are made
        _with_scratch(T) do scr
            _each_chunk(chunks, budget) do cols, _
                fw = _forward(cc, p.X[:, cols])
                E = p.s .* _seeds(EmpiricalFisher(), fw, p.Y[:, cols], p.ℓ, p.s)
                δ = _derivatives(cc, fw, E, length(cc.taps), scr_δ)[m]
                a = fw.inputs[m]
                r = length(a) ÷ length(cols)
                Ds = _derivatives(cc, fw, _unit_cotangents(a, scr), m - 1, scr)
                for (k, (l, off, U, D)) in enumerate(_tap_data(cc, fw, Ds))
                    _add_tap_cross!(H, cc, m, k == m - 1 ? blocks : nothing, l, off, a, U, D, r, δ, scr)
                end
            end
        end
    end
end

# The unfolded input of a convolution tap's weight gradient in `_unfolded_against`: its
# one sample's patches `U` for each of `q` columns (NNlib's im2col buffer).
_unfolded_floats(::_ConvLayer, U, q) = length(U) * q
_unfolded_floats(::Flux.Dense, U, q) = 0

# T_ml for one earlier tap l (θ offset `off`): by all of its columns, or by channel.
function _add_tap_cross!(H, cc, m, ::Nothing, l, off, a, U, D, r, δ, scr)
    rows = cc.offsets[m] .+ (1:length(cc.taps[m].weight))
    view(H, rows, off .+ (1:_tapsize(l))) .+= _unfolded_against(cc.taps[m], a, _sample_rows(l, U, D, r), δ)
end
_add_tap_cross!(H, cc, m, blocks::_ChannelBlocks, l, off, a, U, D, r, δ, scr) =
    _add_channel_cross!(H, cc.taps[m], l, cc.offsets[m], off, a, _channel_rows(l, U, D, r, blocks, scr), δ, blocks)

#------------- curved stages: the activations' own second derivatives -------------#
#
# A stage x ↦ φ.(x) with a curved φ (tanh, σ, softplus …) adds to the GGN and the taps'
# cross terms a term of its own,
#
#     Σ_n Σ_i w_{n,i} ρ_{n,i} ρ_{n,i}ᵀ,   ρ_{n,i} = ∂x_{n,i}/∂θ,   w = g .* φ''.(x),
#
# g = ∂(sℓ)/∂φ.(x) the gradient at the stage's output: the Gram matrix of the rows of the
# stage's input, weighted by entry (of either sign). For a stage of tap k the rows are
# nonzero in θ_{≤k} only, and when each entry of x is on one channel of z_k
# ([`_entry_channels`](@ref)) nonzero in θ_k only in that channel's `Kb` entries: θ_k's
# block is then one `Kb × Kb` Gram matrix per channel and its block against θ_{<k} one
# GEMM per channel, the rows of the earlier taps one SYRK per sign of w.

_curved(st) = false
_curved(st::_Act) = !_piecewise_linear(st)

# Whether the Hessian route knows each stage's second derivative: piecewise linear or elementwise.
_hessian_known(cc::ConvChain) = all(st -> _piecewise_linear(st) || st isa _Act, Iterators.flatten(cc.after))

# (k, j) of each curved stage: the j-th stage of tap k.
_curved_stages(cc::ConvChain) =
    [(k, j) for (k, stages) in enumerate(cc.after) for (j, st) in enumerate(stages) if _curved(st)]

"""
    _stage_weights(cc, fw, p, cols, k, j, scr) -> w (r, n)

`w = g .* φ''.(x)` of stage j of tap k for the chunk `cols` (`fw` its forward pass): `x`
the stage's input, g = ∂(sℓ)/∂φ.(x) by one backward pass, a sample's `r` entries a column.
"""
function _stage_weights(cc::ConvChain, fw::_ConvForward{T}, p::Problem{T}, cols, k, j, scr) where {T}
    x = fw.backs[k][j].input
    φ = cc.after[k][j].φ
    w = Matrix{T}(undef, length(x) ÷ length(cols), length(cols))
    record(m, i, D) = (m, i) == (k, j) && (w .= reshape(D, size(w)) .* reshape(map(ξ -> last(_first_and_second(φ, ξ)), x), size(w)))
    E = p.s .* _seeds(EmpiricalFisher(), fw, p.Y[:, cols], p.ℓ, p.s)
    _derivatives(cc, fw, E, length(cc.taps), scr; seen = record)
    return w
end

"""
    _add_curvature_term!(H, cc, k, j, p, workspace) -> H

`H += Σ_n Σ_i w_{n,i} ρ_{n,i} ρ_{n,i}ᵀ` for stage j of tap k (its lower triangle; a vector
`H` takes the diagonal), over chunks of samples within `workspace` bytes less the blocks
of a channel (`Kb` rows of θ_{≤k}).
"""
function _add_curvature_term!(H::AbstractArray{T}, cc::ConvChain, k, j, p::Problem{T}, workspace) where {T}
    fw1 = _forward(cc, p.X[:, 1:1])
    l = cc.taps[k]
    channel = _entry_channels(l, fw1.inputs[k], cc.after[k][1:j-1])
    blocks = channel === nothing ? nothing : _contiguous_blocks(channel, _out_channels(l))
    whole = blocks === nothing ? k : k - 1                      # the taps whose rows are taken whole
    budget = max(workspace - sizeof(T) * _channel_width(l) * (_nparams(cc) + _channel_width(l)), 0)
    chunks = _sample_chunks(size(p.X, 2), _curvature_bytes_per_sample(cc, fw1, k, j, blocks), budget)
    _with_scratch(T) do scr
        _each_chunk(chunks, budget) do cols, _
            fw = _forward(cc, p.X[:, cols])
            w = vec(transpose(_stage_weights(cc, fw, p, cols, k, j, scr)))   # sample j's i-th at j + (i - 1)·n
            n = length(cols)
            r = length(w) ÷ n
            Ds = _derivatives(cc, fw, _unit_cotangents(fw.backs[k][j].input, scr), k, scr; stages = j - 1)
            data = _tap_data(cc, fw, Ds)
            Q = _entry_rows(data[1:whole], r, n, scr)
            _add_weighted_gram!(H, Q, w, scr)
            if blocks !== nothing
                _, off, U, D = data[k]
                _add_channel_curvature!(H, l, off, _channel_rows(l, U, D, r, blocks, scr), Q, w, blocks)
            end
        end
    end
    return H
end

"""
    _entry_rows(data, r, n, scr) -> Q (P_<, n·r)

The whole rows of the taps of `data` ([`_tap_data`](@ref), from the first) for the `r`
derivatives of each of `n` samples, sample j's i-th in column `j + (i - 1)·n`; an array of `scr`.
"""
function _entry_rows(data, r, n, scr::_Scratch{T}) where {T}
    isempty(data) && return Matrix{T}(undef, 0, n * r)
    P = data[end][2] + _tapsize(data[end][1])
    Q = _take(scr, :entry_rows, P, n, r)
    for (l, off, U, D) in data
        permutedims!(view(Q, off+1:off+_tapsize(l), :, :), _sample_rows(l, U, D, r), (2, 3, 1))
    end
    return reshape(Q, P, n * r)
end

"""
    _add_weighted_gram!(H, Q, w, scr)

`H[1:P, 1:P] += Q diag(w) Qᵀ` (`Q` `P × b`), its lower triangle: one SYRK each for the
columns of positive and of negative w, scaled by √|w|. A vector `H` takes the diagonal.
"""
function _add_weighted_gram!(H::AbstractMatrix{T}, Q, w, scr) where {T}
    P = size(Q, 1)
    P == 0 && return H
    for sign in (one(T), -one(T))
        at = findall(x -> sign * x > 0, w)
        isempty(at) && continue
        A = _take(scr, :weighted_rows, P, length(at))
        @inbounds for (c, b) in enumerate(at)
            f = sqrt(sign * w[b])
            for q in 1:P
                A[q, c] = f * Q[q, b]
            end
        end
        LinearAlgebra.BLAS.syrk!('L', 'N', sign, A, one(T), view(H, 1:P, 1:P))
    end
    return H
end

function _add_weighted_gram!(d::AbstractVector{T}, Q, w, scr) where {T}
    @inbounds for b in eachindex(w), q in axes(Q, 1)
        d[q] += w[b] * Q[q, b]^2
    end
    return d
end

"""
    _add_channel_curvature!(H, l, off, Jc, Q, w, blocks)

Tap `l`'s (θ offset `off`) part of the weighted Gram matrix from its rows by channel
(`Jc` `(r, Kb, n)`, [`_channel_rows`](@ref)): for each channel c, `Σ w Jc Jcᵀ` (`Kb × Kb`)
and its block against the earlier taps' rows `Q` (`Σ w Jc Qᵀ`), into c's rows and
columns ([`_channel_column`](@ref)); a vector `H` takes the diagonal.
"""
function _add_channel_curvature!(H::AbstractMatrix{T}, l, off, Jc, Q, w, blocks) where {T}
    _, Kb, n = size(Jc)
    P = size(Q, 1)
    for (c, I) in enumerate(blocks.ranges)
        isempty(I) && continue
        b = (first(I) - 1) * n + 1:last(I) * n                             # the columns of I's entries
        Cm = reshape(permutedims(view(Jc, I, :, :), (2, 3, 1)), Kb, :)     # (Kb, n·|I|)
        Cw = Cm .* transpose(view(w, b))
        B = Cw * transpose(Cm)
        q = [off + _channel_column(l, c, k) for k in 1:Kb]
        @inbounds for k2 in 1:Kb, k1 in 1:Kb
            H[q[k1], q[k2]] += B[k1, k2]                   # the upper triangle's are mirrored over
        end
        P == 0 && continue
        X = Cw * transpose(view(Q, :, b))                 # below θ_{<k}'s columns
        @inbounds for c2 in 1:P, k1 in 1:Kb
            H[q[k1], c2] += X[k1, c2]
        end
    end
    return H
end

function _add_channel_curvature!(d::AbstractVector{T}, l, off, Jc, Q, w, blocks) where {T}
    _, Kb, n = size(Jc)
    @inbounds for (c, I) in enumerate(blocks.ranges), k in 1:Kb
        q = off + _channel_column(l, c, k)
        for i in I, j in 1:n
            d[q] += w[j + (i - 1) * n] * Jc[i, k, j]^2
        end
    end
    return d
end

"""
    _curvature_bytes_per_sample(cc, fw, k, j, blocks) -> bytes

One sample's working memory for stage j of tap k's term, `r` = a sample's entries of its
input: the `r` unit cotangents and the weights; per tap its forward pass (input, patches,
z four times) and, up to tap k, its derivatives (input and z size, three times) and rows
(three times: made, reordered, weighted; the channel's [`_channel_width`](@ref) for tap k
when `blocks` are known), the sizes read from `fw`, a forward pass of one sample.
"""
function _curvature_bytes_per_sample(cc::ConvChain, fw::_ConvForward{T}, k, j, blocks) where {T}
    r = length(fw.backs[k][j].input)
    floats = r * r + 2 * r
    for (m, (l, a)) in enumerate(zip(cc.taps, fw.inputs))
        z = length(_affine(l, a))
        floats += length(fw.patches[m]) + 2 * length(a) + 4 * z
        m <= k || continue
        width = m == k && blocks !== nothing ? _channel_width(l) : _tapsize(l)
        floats += r * (2 * length(a) + 3 * z + 3 * width)
    end
    return sizeof(T) * floats
end
