"""
    FluxHess

Second-order derivatives of Flux models: the parameter Hessian, the generalized
Gauss-Newton (GGN) and the empirical Fisher of a Flux loss, their diagonals, KFAC
factors and products with vectors, and derivatives with respect to the inputs.

```julia
using Flux, FluxHess
model = f64(Chain(Dense(2 => 8, tanh), Dense(8 => 3)))
X = randn(2, 100)                                   # features × batch
Y = Flux.onehotbatch(rand(1:3, 100), 1:3)           # C × N
H = curvature(Hessian(), model, X, Y; loss = Flux.logitcrossentropy, agg = sum)   # P × P
G = curvature(GGN(), model, X, Y; loss = Flux.logitcrossentropy)                  # agg = mean
```

Conventions, as Flux has them:
- `X` is features × batch (`d × N`), or any array whose last dimension is the batch
  (`W × H × C × N` for an image model); `Y` is `C × N` (a vector for `C == 1`), any
  `AbstractArray` (a `OneHotMatrix` included).
- `loss` is a Flux loss function: `Flux.mse`, `Flux.crossentropy`,
  `Flux.logitcrossentropy`, `Flux.binarycrossentropy` or
  `Flux.logitbinarycrossentropy`; `agg` is `mean` (Flux's default) or `sum`. The batch
  loss is `L = s · Σ_n ℓ_n`: `s = 1` for `sum`, `1/N` for the (logit)crossentropies and
  `1/(N·C)` for `mse` and the (logit)binarycrossentropies under `mean` (Flux averages
  those over every entry of the `C × N` array); every curvature carries the same `s`.
- The kind of curvature comes first and is dispatched on: [`Hessian`](@ref),
  [`GGN`](@ref) or [`EmpiricalFisher`](@ref).
- θ is `Flux.destructure(model)[1]` (per Dense layer `vec(W)` then `b`); results are in
  the model's eltype (`f64(model)` for Float64). The model is used in test mode
  (`Flux.testmode!` on a rebuilt copy; the caller's model is never changed).

Each quantity has one of three routes, chosen from the model: Chains of `Dense` layers
and elementwise functions (a softmax after the last Dense layer allowed) get per-sample
factors and every block of the P × P matrix by BLAS; Chains of `Conv`, `CrossCor` and
`Dense` layers with pools, `Flux.flatten` and elementwise functions between them get
per-sample rows on unfolded patches (what `NNlib.unfold` gives) and every quantity from
them by BLAS, the exact Hessian with each layer's cross terms and each curved function's
own term; any other Flux model (and the exact Hessian of a convolutional chain with a
softmax between its layers) is batched over the samples, its Jacobians by forward mode,
its Hessian by ForwardDiff over Zygote layer by layer (products of its Duals by BLAS).
For the curvatures and `param_jacobian`, a parameter-free layer the first two routes do
not know (an anonymous function such as `x -> 2 .* x`) counts as elementwise where it acts
on the call's batch as one scalar function entry by entry (checked there: its values and
its first and second derivatives along a direction).

Second derivatives with respect to θ are never reverse over reverse.

Threads: the work is BLAS (`LinearAlgebra.BLAS.set_num_threads`, or
`OPENBLAS_NUM_THREADS`); Julia's own threads are not used.

Exported: the kinds and the functions whose names no FluxML package takes.
Public but not exported (call them qualified): `FluxHess.hessian`, `FluxHess.ggn`,
`FluxHess.empirical_fisher`, `FluxHess.gradient` and `FluxHess.kron`, which would
clash with `Zygote.hessian`, `Flux.gradient` and `LinearAlgebra.kron`, and
`FluxHess.Bridge`, the layer the Python package `fluxhess` calls.
"""
module FluxHess

export Hessian, GGN, EmpiricalFisher,
       curvature, curvature!, hvp, diagonal,
       param_jacobian, input_jacobian, input_hessian, laplacian, divergence

using Compat: @compat
@compat public hessian, ggn, empirical_fisher, gradient, kron, Kind, WORKSPACE, Bridge

import Flux
import ForwardDiff
import NNlib
import Random
import Zygote
using LinearAlgebra: LinearAlgebra, mul!, tr
using PrecompileTools: @compile_workload, @setup_workload
using Statistics: mean

include("problem.jl")      # kinds, losses, the Problem of a call
include("columnwise.jl")   # per-sample Jacobians of batched maps by seeded Duals
include("routes.jl")       # DenseChain or Generic: what the model is
include("scratch.jl")      # work arrays outside the heap, reused by name, freed at a route's end
include("structured.jl")   # Dense chains: per-sample factors, blocks by BLAS
include("conv.jl")         # convolutional chains: per-sample rows on unfolded patches
include("dualgemm.jl")     # the generic Hessian's Duals: matrix products by BLAS, pool pullbacks
include("generic.jl")      # any Flux model, batched over samples
include("quantities.jl")   # each quantity on a Problem, dispatching on kind and route
include("inputs.jl")       # derivatives with respect to the inputs
include("api.jl")          # the public functions: features × batch, Flux losses, keywords
include("spec.jl")         # back to the Python layer spec: layers identified by effect
include("layers.jl")       # a model's parameter blocks, its parts, its input shape
include("bridge.jl")       # FluxHess.Bridge: NumPy's conventions, for the Python package
include("workload.jl")     # what precompilation runs

end # module FluxHess
