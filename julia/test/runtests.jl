# FluxHess's tests, one file per topic. Run from the repository root:
#
#     julia --project=julia -e 'import Pkg; Pkg.test()'    # or: ] test FluxHess
#
# or, in an environment that has FluxHess and the test dependencies (test/Project.toml),
# `julia julia/test/runtests.jl`. The fixtures in test/fixtures/ were written by
# fluxhess's JAX backend (tests/fixtures/make_fixtures.py in the Python package).

using Test

include("testutils.jl")

@testset "FluxHess.jl" begin
    @testset "Julia API: conventions" begin include("api.jl") end
    @testset "against the JAX fixtures" begin include("fixtures.jl") end
    @testset "structured route" begin include("structured.jl") end
    @testset "convolutional route" begin include("conv.jl") end
    @testset "generic route" begin include("generic.jl") end
    @testset "generic Hessian, layer by layer" begin include("hessian.jl") end
    @testset "identities" begin include("identities.jl") end
    @testset "layers identified by what they do" begin include("spec.jl") end
end

report_worst()
