# What every test file uses: the packages, the comparison, the references.

using FluxHess, Flux, LinearAlgebra, TOML
using Statistics: mean
import ForwardDiff, Zygote

const Bridge = FluxHess.Bridge

const KINDS = ("hessian" => Hessian(), "ggn" => GGN(), "ef" => EmpiricalFisher())
const MATRIX = Dict("hessian" => "hessian", "ggn" => "ggn", "ef" => "empirical_fisher")

# A layer FluxHess cannot see through: a Chain ending in it takes the generic route, with
# the same mathematics as the structured one.
opaque(x) = x

# Flux uses tanh_fast/sigmoid_fast (a few ulps from Base's); JAX rounds differently
# again. Comparisons are normwise (isapprox on arrays).
const RTOL = 1e-10
const ATOL = 1e-12
const WORST = Dict{String,Float64}()  # quantity => largest relative error against a fixture

function check(quantity, got, want)
    @test size(got) == size(want)
    size(got) == size(want) || return
    err = norm(got .- want) / max(norm(want), eps())
    WORST[quantity] = max(get(WORST, quantity, 0.0), err)
    @test isapprox(got, want; rtol = RTOL, atol = ATOL)
end

function report_worst()
    println("\nlargest normwise relative error per quantity (FluxHess.jl vs the JAX fixtures):")
    for (q, e) in sort!(collect(WORST); by = first)
        println(rpad(q, 28), " ", e)
    end
end

# The factor s of L = s · Σ_n ℓ_n, from Flux's definitions (mean over samples for the
# crossentropies, over every entry otherwise).
loss_factor(loss, agg, C, N) = agg === sum ? 1.0 :
    any(f -> f === loss, (Flux.crossentropy, Flux.logitcrossentropy)) ? 1 / N : 1 / (N * C)

# Per-sample references by Zygote and ForwardDiff, one sample at a time, and the Hessian
# forward over forward: X is d × N, Y is C × N.
function per_sample_references(model, X, Y, loss, agg)
    θ, re = Flux.destructure(model)
    P, N, C = length(θ), size(X, 2), size(Y, 1)
    s = loss_factor(loss, agg, C, N)
    G, F, J = zeros(P, P), zeros(P, P), zeros(C, P, N)
    for n in 1:N
        xn, yn = X[:, n:n], Y[:, n:n]
        Jn = Zygote.jacobian(ϑ -> vec(re(ϑ)(xn)), θ)[1]
        Λn = ForwardDiff.hessian(u -> loss(reshape(u, :, 1), yn; agg = sum), vec(model(xn)))
        gn = Zygote.gradient(ϑ -> loss(re(ϑ)(xn), yn; agg = sum), θ)[1]
        G .+= s .* (transpose(Jn) * Λn * Jn)
        F .+= s .* (gn * transpose(gn))
        J[:, :, n] = Jn
    end
    H = ForwardDiff.hessian(ϑ -> loss(re(ϑ)(X), Y; agg), θ)
    return (; hessian = H, ggn = G, empirical_fisher = F, param_jacobian = J)
end

# Input derivatives one sample at a time by ForwardDiff: (C, d, N), (C, d, d, N), (C, N).
function per_sample_input_references(model, X)
    d = size(X, 1)
    f(x) = vec(model(reshape(x, :, 1)))
    Jx = stack([ForwardDiff.jacobian(f, X[:, n]) for n in axes(X, 2)])
    Hx = stack([reshape(ForwardDiff.jacobian(x -> vec(ForwardDiff.jacobian(f, x)), X[:, n]), :, d, d)
                for n in axes(X, 2)])
    Δ = [sum(Hx[c, i, i, n] for i in 1:d) for c in axes(Hx, 1), n in axes(Hx, 4)]
    return (; input_jacobian = Jx, input_hessian = Hx, laplacian = Δ)
end
