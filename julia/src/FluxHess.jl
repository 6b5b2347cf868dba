# The package entry point: the module's source is julia/FluxHess.jl. (Packages load in a
# bare module, where only Core is defined.)
Core.include(@__MODULE__, joinpath(dirname(@__DIR__), "FluxHess.jl"))
