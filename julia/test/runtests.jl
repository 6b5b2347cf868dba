# Checks FluxHess.jl against the fixtures that fluxhess's JAX backend wrote
# (tests/fixtures/*.toml, from tests/fixtures/make_fixtures.py), plus a few
# identities that need no reference. Run from the repository root:
#
#     julia --project=julia -e 'import Pkg; Pkg.instantiate()'   # once
#     julia --project=julia julia/test/runtests.jl
#
# Test and TOML are standard libraries (found through @stdlib on the load path).

using Test, TOML, LinearAlgebra
include(joinpath(@__DIR__, "..", "FluxHess.jl"))
using .FluxHess

const FIXTURES = normpath(joinpath(@__DIR__, "..", "..", "tests", "fixtures"))

# Flux uses tanh_fast/sigmoid_fast (a few ulps from Base's); JAX rounds differently
# again. Comparisons are normwise (isapprox on arrays).
const RTOL = 1e-10
const ATOL = 1e-12

# A fixture array: `data` in Fortran order and NumPy's `shape`.
array(t) = reshape(Float64.(t["data"]), Tuple(Int.(t["shape"])))

const WORST = Dict{String,Float64}()  # quantity => largest relative error seen

function check(quantity, got, want)
    @test size(got) == size(want)
    size(got) == size(want) || return
    err = norm(got .- want) / max(norm(want), eps())
    WORST[quantity] = max(get(WORST, quantity, 0.0), err)
    @test isapprox(got, want; rtol = RTOL, atol = ATOL)
end

function run_fixture(fx)
    model = FluxHess.build_model(fx["source"]; T = Float64)
    θ, X, Y, V = array(fx["theta"]), array(fx["X"]), array(fx["Y"]), array(fx["V"])
    lossname, agg = fx["loss"], fx["agg"]
    ex = fx["expected"]
    want(q) = array(ex[q])
    d, N = size(X, 2), size(X, 1)

    @test length(FluxHess.parameters(model)) == length(θ)
    check("forward", FluxHess.forward(model, θ, X), want("forward"))
    # Any AbstractMatrix in NumPy index order works, not only an Array (juliacall
    # passes a strided PyArray).
    check("forward", FluxHess.forward(model, θ, transpose(permutedims(X))), want("forward"))
    got_loss = FluxHess.loss(model, θ, X, Y, lossname, agg)
    WORST["loss"] = max(get(WORST, "loss", 0.0), abs(got_loss - ex["loss"]) / abs(ex["loss"]))
    @test got_loss ≈ ex["loss"] rtol = RTOL
    check("gradient", FluxHess.gradient(model, θ, X, Y, lossname, agg), want("gradient"))
    H = FluxHess.hessian(model, θ, X, Y, lossname, agg)
    check("hessian", H, want("hessian"))
    check("ggn", FluxHess.ggn(model, θ, X, Y, lossname, agg), want("ggn"))
    check("empirical_fisher", FluxHess.empirical_fisher(model, θ, X, Y, lossname, agg),
          want("empirical_fisher"))
    for kind in ("hessian", "ggn", "ef")
        check("hvp_$kind", FluxHess.hvp(model, θ, X, Y, V, lossname, agg, kind), want("hvp_$kind"))
        check("diagonal_$kind", FluxHess.diagonal(model, θ, X, Y, lossname, agg, kind),
              want("diagonal_$kind"))
    end
    for kind in ("ggn", "ef")
        got = FluxHess.kron(model, θ, X, Y, lossname, agg, kind)
        expected = ex["kron_$kind"]
        @test length(got) == length(expected)
        for ((A, G), e) in zip(got, expected)
            check("kron_$(kind)_A", A, array(e["A"]))
            check("kron_$(kind)_G", G, array(e["G"]))
        end
    end
    check("param_jacobian", FluxHess.param_jacobian(model, θ, X), want("param_jacobian"))
    check("input_jacobian", FluxHess.input_jacobian(model, θ, X), want("input_jacobian"))
    check("input_hessian", FluxHess.input_hessian(model, θ, X), want("input_hessian"))
    check("laplacian", FluxHess.laplacian(model, θ, X), want("laplacian"))
    if haskey(ex, "divergence")
        check("divergence", FluxHess.divergence(model, θ, X), want("divergence"))
    else
        @test_throws DimensionMismatch FluxHess.divergence(model, θ, X)
    end

    # The spec comes back from the Flux model, with its weights.
    spec = FluxHess.to_spec(FluxHess.build_model(fx["source"]))
    @test !isempty(spec)
    @test all(l -> l["kind"] in ("dense", "activation", "flatten"), spec)
end

@testset "FluxHess.jl" begin
    @testset "fixtures" begin
        files = sort(filter(endswith(".toml"), readdir(FIXTURES; join = true)))
        @test !isempty(files)
        for file in files
            fx = TOML.parsefile(file)
            @testset "$(fx["name"])" begin
                run_fixture(fx)
            end
        end
    end

    @testset "identities" begin
        X = [0.3 -1.2; 0.7 0.4; -0.5 0.9]           # (N, d) = (3, 2)
        Y = [0.1 0.2; -0.3 0.5; 0.8 -0.1]
        linear = FluxHess.build_model("Chain(Dense(2 => 2))")
        θ = FluxHess.parameters(linear) .+ 0.1
        # Linear model + mse: the Hessian is the GGN.
        @test FluxHess.hessian(linear, θ, X, Y, "mse", "sum") ≈
              FluxHess.ggn(linear, θ, X, Y, "mse", "sum") rtol = 1e-12

        mlp = FluxHess.build_model("Chain(Dense(2 => 3, tanh), Dense(3 => 2))"; seed = 1)
        θ = FluxHess.parameters(mlp)
        V = reshape(collect(range(-1, 1; length = 2 * length(θ))), length(θ), 2)
        for kind in ("hessian", "ggn", "ef")
            M = kind == "hessian" ? FluxHess.hessian(mlp, θ, X, Y, "mse", "mean") :
                kind == "ggn" ? FluxHess.ggn(mlp, θ, X, Y, "mse", "mean") :
                FluxHess.empirical_fisher(mlp, θ, X, Y, "mse", "mean")
            @test issymmetric(M)
            @test FluxHess.hvp(mlp, θ, X, Y, V, "mse", "mean", kind) ≈ M * V rtol = 1e-10
            @test FluxHess.diagonal(mlp, θ, X, Y, "mse", "mean", kind) ≈ diag(M) rtol = 1e-10
        end
        # KFAC is exact for one sample: A ⊗ G is the layer's [vec(W); b] block.
        x1, y1 = X[1:1, :], Y[1:1, :]
        for (kind, M) in (("ggn", FluxHess.ggn(mlp, θ, x1, y1, "mse", "sum")),
                          ("ef", FluxHess.empirical_fisher(mlp, θ, x1, y1, "mse", "sum")))
            blocks = FluxHess.kron(mlp, θ, x1, y1, "mse", "sum", kind)
            offset = 0
            for (A, G) in blocks
                n = size(A, 1) * size(G, 1)
                @test LinearAlgebra.kron(A, G) ≈ M[offset+1:offset+n, offset+1:offset+n] rtol = 1e-10
                offset += n
            end
            @test offset == length(θ)
        end
        # Float32 models compute in Float32.
        m32 = FluxHess.build_model("Chain(Dense(2 => 3, tanh), Dense(3 => 2))"; T = Float32)
        @test eltype(FluxHess.hessian(m32, FluxHess.parameters(m32), X, Y, "mse", "sum")) == Float32
        # Errors name what went wrong.
        @test_throws DimensionMismatch FluxHess.gradient(mlp, θ[1:end-1], X, Y, "mse", "sum")
        @test_throws ArgumentError FluxHess.loss(mlp, θ, X, Y, "hinge", "sum")
        @test_throws ArgumentError FluxHess.hvp(mlp, θ, X, Y, V, "mse", "sum", "fisher")
        @test_throws ArgumentError FluxHess.to_spec(FluxHess.build_model("Chain(Dense(2 => 2, x -> x^3))"))
        scaled = FluxHess.build_model("Chain(Dense(2 => 2), Flux.Scale(2), Dense(2 => 2))")
        @test_throws ArgumentError FluxHess.kron(scaled, FluxHess.parameters(scaled), X, Y, "mse", "sum", "ggn")
        # to_spec round trip: the weights come back in θ's order.
        spec = FluxHess.to_spec(mlp)
        @test [l["kind"] for l in spec] == ["dense", "dense"]
        @test spec[1]["activation"] == "tanh" && spec[2]["activation"] == "identity"
        @test vcat(vec(spec[1]["weight"]), spec[1]["bias_values"],
                   vec(spec[2]["weight"]), spec[2]["bias_values"]) == θ
    end
end

println("\nlargest normwise relative error per quantity (FluxHess.jl vs the JAX fixtures):")
for (q, e) in sort!(collect(WORST); by = first)
    println(rpad(q, 24), " ", e)
end
