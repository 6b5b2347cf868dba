include(joinpath(@__DIR__, "src", "FluxHess.jl"))  # the module FluxHess, for `include` outside a package environment
