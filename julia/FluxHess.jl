"""
    FluxHess

Second-order derivatives of Flux models, for the `fluxhess` Python package (and
usable on its own from Julia: `] dev path/to/fluxhess/julia`, then `using FluxHess`).

Every entry function takes arrays in **NumPy index order** — `X` is `(N, d)`,
`Y` is `(N, C)`, `V` is `(P, k)` — because that is how juliacall hands a C-ordered
NumPy array over, and returns plain `Array`s in NumPy index order, so Python only
copies. Inside, data is features × batch (`X'` is `d × N`), as Flux expects.

θ is the flat parameter vector of `Flux.destructure(model)` (layers in Chain
order, per Dense layer `vec(W)` then `b`). Its eltype is the model's: build the
model with [`build_model`](@ref) and `T = Float64` for float64 results.

Losses are `Flux.Losses` functions called exactly: `agg = "sum"` passes
`agg = sum`, `agg = "mean"` uses Flux's default `agg = mean`. The batch loss is
`L = s · Σ_n ℓ_n` with `s = 1` for `"sum"`, `1/N` for the (logit)crossentropies
and `1/(N·C)` for `mse` and the (logit)binarycrossentropies under `"mean"`
(Flux averages those over every element of the `C × N` array); every curvature
carries the same `s`.

The curvature kind is a type: [`Hessian`](@ref), [`GGN`](@ref) or
[`EmpiricalFisher`](@ref). Each quantity has two routes, chosen by the model
([`route`](@ref)):
- [`DenseChain`](@ref): a Chain of `Dense` layers and elementwise functions (a
  softmax/logsoftmax and other parameter-free layers allowed after the last Dense
  layer, any parameter-free layers before the first). Per-sample factors for a
  chunk of samples at once, then every block of the P × P matrix by BLAS
  (`src/structured.jl`).
- [`Generic`](@ref): any other Flux model, batched over the samples: Jacobians by
  forward mode through `re(θ)(X)` in chunks of parameter directions, the
  Hessian by ForwardDiff over Zygote (`src/generic.jl`).

Second derivatives with respect to θ are ForwardDiff over Zygote (or closed
forms of the chain rule), never reverse over reverse.

Threads: the work is BLAS (`LinearAlgebra.BLAS.get_num_threads()` threads, set
with `BLAS.set_num_threads` or `OPENBLAS_NUM_THREADS`; Julia's default is half the
cores, and the Python bridge sets all of them); Julia's own threads are not used.
"""
module FluxHess

# `gradient` and `kron` are public but not exported: they would clash with
# `Zygote.gradient`/`Flux.gradient` and `LinearAlgebra.kron`. Call them as
# `FluxHess.gradient` and `FluxHess.kron`.
export build_model, parameters, to_spec,
       Hessian, GGN, EmpiricalFisher, DenseChain, Generic, route,
       forward, loss, hessian, ggn, empirical_fisher, curvature, curvature!, hvp, diagonal,
       param_jacobian, input_jacobian, input_hessian, laplacian, divergence

import Flux
import ForwardDiff
import Random
import Zygote
using LinearAlgebra: LinearAlgebra, mul!, tr
using PrecompileTools: @compile_workload, @setup_workload

include(joinpath(@__DIR__, "src", "problem.jl"))      # kinds, losses, models, the Problem, forward/loss/gradient
include(joinpath(@__DIR__, "src", "columnwise.jl"))   # per-sample Jacobians of batched maps by seeded Duals
include(joinpath(@__DIR__, "src", "routes.jl"))       # DenseChain or Generic: what the model is
include(joinpath(@__DIR__, "src", "structured.jl"))   # Dense chains: per-sample factors, blocks by BLAS
include(joinpath(@__DIR__, "src", "generic.jl"))      # any Flux model, batched over samples
include(joinpath(@__DIR__, "src", "quantities.jl"))   # the public quantities, dispatching on kind and route
include(joinpath(@__DIR__, "src", "inputs.jl"))       # derivatives with respect to the inputs
include(joinpath(@__DIR__, "src", "spec.jl"))         # back to the Python layer spec: layers identified by effect
include(joinpath(@__DIR__, "src", "layers.jl"))       # a model's parameter blocks, its parts, its input shape
include(joinpath(@__DIR__, "src", "workload.jl"))     # what precompilation runs

end # module FluxHess
