#############################################################################
#     The generic Hessian's Duals: matrix products by BLAS, pool pullbacks  #
#############################################################################

"""
    HessianTag

The tag of the Duals the generic Hessian pushes through a model (forward over reverse,
[`_hessian_block!`](@ref)). A product of matrices whose eltype is such a Dual (a Dense
layer's `W * a`, its pullback's `Δ * aᵀ` and `Wᵀ * Δ`) runs as BLAS products of the
value and partial matrices instead of Julia's generic loop over Duals, which is about a
hundred times slower; Duals of any other tag are left alone.
"""
struct HessianTag end

const HDual{T,w} = ForwardDiff.Dual{HessianTag,T,w}

# A strided matrix, possibly transposed, of eltype E.
const _StridedOp{E} = Union{StridedMatrix{E},LinearAlgebra.Adjoint{E,<:StridedMatrix{E}},
                            LinearAlgebra.Transpose{E,<:StridedMatrix{E}}}

"""
    _components(A) -> S (m × k × (w + 1)) or A

`S[:, :, 1]` the values of the Dual matrix `A` (as it reads, transposed or not),
`S[:, :, 1 + t]` its t-th partials; a real matrix comes back as it is.
"""
_components(A::AbstractMatrix{<:Real}, ::Val) = A
function _components(A::AbstractMatrix{HDual{T,w}}, ::Val{w}) where {T,w}
    S = Array{T}(undef, size(A)..., w + 1)
    @inbounds for j in axes(A, 2), i in axes(A, 1)
        d = A[i, j]
        S[i, j, 1] = ForwardDiff.value(d)
        for t in 1:w
            S[i, j, 1+t] = ForwardDiff.partials(d, t)
        end
    end
    return S
end

_value(S::AbstractArray{T,3}) where {T} = view(S, :, :, 1)
_value(A::AbstractMatrix) = A

# C_t = A_t B_0 + A_0 B_t for the partials t (a real factor has no partials).
function _partials!(Ct, A::AbstractArray{T,3}, B::AbstractArray{T,3}, t) where {T}
    mul!(Ct, view(A, :, :, 1 + t), view(B, :, :, 1))
    return mul!(Ct, view(A, :, :, 1), view(B, :, :, 1 + t), true, true)
end
_partials!(Ct, A::AbstractArray{T,3}, B::AbstractMatrix, t) where {T} = mul!(Ct, view(A, :, :, 1 + t), B)
_partials!(Ct, A::AbstractMatrix, B::AbstractArray{T,3}, t) where {T} = mul!(Ct, A, view(B, :, :, 1 + t))

function LinearAlgebra.mul!(C::StridedMatrix{HDual{T,w}}, A::_StridedOp{<:Union{T,HDual{T,w}}},
                            B::_StridedOp{<:Union{T,HDual{T,w}}}, α::Number, β::Number) where {T<:LinearAlgebra.BlasFloat,w}
    size(A, 2) == size(B, 1) && size(C) == (size(A, 1), size(B, 2)) || throw(DimensionMismatch(
        "C is $(size(C)), A is $(size(A)), B is $(size(B))"))
    As, Bs = _components(A, Val(w)), _components(B, Val(w))
    Cs = Array{T}(undef, size(C)..., w + 1)
    mul!(view(Cs, :, :, 1), _value(As), _value(Bs))
    for t in 1:w
        _partials!(view(Cs, :, :, 1 + t), As, Bs, t)
    end
    @inbounds for j in axes(C, 2), i in axes(C, 1)
        AB = HDual{T,w}(Cs[i, j, 1], ForwardDiff.Partials{w,T}(ntuple(t -> Cs[i, j, 1+t], Val(w))))
        C[i, j] = iszero(β) ? α * AB : α * AB + β * C[i, j]
    end
    return C
end

# A pool's pullback is linear in its cotangent, its choices made on the floats. The
# layer-by-layer Hessian hands a pool inside a branch (`Parallel`, `SkipConnection`) the
# layer's input as floats and a Dual cotangent; NNlib's own pullback allocates the result
# like its float input, so it runs here on the cotangent's value and each of its partials.
for ∇pool in (:∇maxpool, :∇meanpool)
    @eval function NNlib.$∇pool(dy::AbstractArray{HDual{T,w},N}, y::AbstractArray{T,N}, x::AbstractArray{T,N},
                                pdims::NNlib.PoolDims; kw...) where {T<:Real,w,N}
        value = NNlib.$∇pool(ForwardDiff.value.(dy), y, x, pdims; kw...)
        partials = ntuple(t -> NNlib.$∇pool(ForwardDiff.partials.(dy, t), y, x, pdims; kw...), Val(w))
        return map((v, ps...) -> HDual{T,w}(v, ForwardDiff.Partials{w,T}(ps)), value, partials...)
    end
end
