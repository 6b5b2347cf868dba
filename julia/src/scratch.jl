#############################################################################
#    Work arrays outside Julia's heap, reused by name, freed when a route ends    #
#############################################################################

"""
    _Scratch{T}

Work arrays of `T` by name, reused from panel to panel and from chunk to chunk of
samples, in memory from `Libc.malloc` that [`_with_scratch`](@ref) frees when the route
ends.

Outside the collector's heap because what a call allocates there sets how often Julia
collects, and a full collection costs 0.2 s in a bare Julia with Flux loaded and 0.3–0.4 s
in the Julia that Python starts: a Dense chain's Hessian (P = 5,443, N = 1,000) from
Python took 1.4 s with its factors on the heap, 0.5 s of it collecting, and 0.8 s with the
collector off. The arrays a route takes are within its workspace as before; they are freed
at its end, not at some later collection.
"""
struct _Scratch{T}
    buffers::Dict{Any,Tuple{Ptr{T},Int}}
end

"""
    _with_scratch(f, T) -> f(scr)

`f` given a new [`_Scratch{T}`](@ref), its memory freed when `f` returns or throws. No
array taken from it may outlive `f`.
"""
function _with_scratch(f, ::Type{T}) where {T}
    scr = _Scratch{T}(Dict{Any,Tuple{Ptr{T},Int}}())
    try
        return f(scr)
    finally
        foreach(((p, _),) -> Libc.free(p), values(scr.buffers))
        empty!(scr.buffers)
    end
end

"""
    _take(scr, name, dims...) -> Array{T}

An uninitialised `Array{T}` of `dims` over `name`'s memory, grown as needed; it is valid
until the next take of `name` and at most until the [`_with_scratch`](@ref) that made
`scr` returns.
"""
function _take(s::_Scratch{T}, name, dims::Int...) where {T}
    n = prod(dims)
    p, capacity = get(s.buffers, name, (Ptr{T}(C_NULL), 0))
    if capacity < n
        Libc.free(p)
        delete!(s.buffers, name)
        p = Ptr{T}(Libc.malloc(n * sizeof(T)))
        p == C_NULL && throw(OutOfMemoryError())
        s.buffers[name] = (p, n)
    end
    return unsafe_wrap(Array, p, dims)
end
