# Identities that need no reference, buffers, KFAC, Float32, and errors.

let  # this file's names stay its own

    X = [0.3 0.7 -0.5; -1.2 0.4 0.9]            # d × N = 2 × 3
    Y = [0.1 -0.3 0.8; 0.2 0.5 -0.1]            # C × N
    linear = Bridge.build_model("Chain(Dense(2 => 2))")
    θ = Bridge.parameters(linear) .+ 0.1
    # Linear model + mse: the Hessian is the GGN.
    @test FluxHess.hessian(linear, X, Y; agg = sum, params = θ) ≈ FluxHess.ggn(linear, X, Y; agg = sum, params = θ) rtol = 1e-12

    mlp = Bridge.build_model("Chain(Dense(2 => 3, tanh), Dense(3 => 2))"; seed = 1)
    θ = Bridge.parameters(mlp)
    P = length(θ)
    V = reshape(collect(range(-1, 1; length = 2P)), P, 2)
    for (name, kind) in KINDS
        M = curvature(kind, mlp, X, Y)
        @test issymmetric(M)
        @test M == (name == "hessian" ? FluxHess.hessian : name == "ggn" ? FluxHess.ggn : FluxHess.empirical_fisher)(mlp, X, Y)
        # Into a caller's buffer, in either memory order (as NumPy hands one over).
        @test curvature!(Matrix{Float64}(undef, P, P), kind, mlp, X, Y) == M
        @test curvature!(transpose(Matrix{Float64}(undef, P, P)), kind, mlp, X, Y) == M
        @test Bridge.curvature!(transpose(Matrix{Float64}(undef, P, P)), mlp, θ, permutedims(X), permutedims(Y),
                                "mse", "mean", kind; workspace = 2^20) == M
        @test_throws DimensionMismatch curvature!(zeros(P, P + 1), kind, mlp, X, Y)
        @test_throws DimensionMismatch curvature!(zeros(Float32, P, P), kind, mlp, X, Y)
        @test hvp(kind, mlp, X, Y, V) ≈ M * V rtol = 1e-10
        @test hvp(kind, mlp, X, Y, V[:, 1]) ≈ M * V[:, 1] rtol = 1e-10
        @test diagonal(kind, mlp, X, Y) ≈ diag(M) rtol = 1e-10
    end

    # KFAC is exact for one sample: A ⊗ G is the layer's [vec(W); b] block.
    x1, y1 = X[:, 1:1], Y[:, 1:1]
    for kind in (GGN(), EmpiricalFisher())
        M = curvature(kind, mlp, x1, y1; agg = sum)
        offset = 0
        for (A, G) in FluxHess.kron(kind, mlp, x1, y1; agg = sum)
            n = size(A, 1) * size(G, 1)
            @test LinearAlgebra.kron(A, G) ≈ M[offset+1:offset+n, offset+1:offset+n] rtol = 1e-10
            offset += n
        end
        @test offset == P
    end

    # Float32 models compute in Float32.
    m32 = Bridge.build_model("Chain(Dense(2 => 3, tanh), Dense(3 => 2))"; T = Float32)
    @test eltype(FluxHess.hessian(m32, X, Y)) == Float32

    # Errors name what went wrong; the Bridge classes them for Python.
    @test_throws DimensionMismatch FluxHess.gradient(mlp, X, Y; params = θ[1:end-1])
    @test_throws DimensionMismatch curvature(GGN(), mlp, X, Y[1:1, :])
    # The shapes are checked on two samples: a model that mixes the batch is caught, as is
    # one whose outputs do not fit the targets.
    pooled = Bridge.build_model("Chain(Dense(2 => 2), x -> sum(x; dims = 2))")
    @test_throws DimensionMismatch curvature(GGN(), pooled, X, Y)
    @test_throws DimensionMismatch curvature(GGN(), mlp, X, Y[:, 1:2])
    @test_throws ArgumentError curvature(GGN(), mlp, X, Y; loss = Flux.Losses.huber_loss)
    @test_throws ArgumentError curvature(GGN(), mlp, X, Y; agg = identity)
    @test_throws ArgumentError FluxHess.kron(Hessian(), mlp, X, Y)
    @test_throws MethodError curvature(:ggn, mlp, X, Y)
    scaled = Bridge.build_model("Chain(Dense(2 => 2), Flux.Scale(2), Dense(2 => 2))")
    @test_throws ArgumentError FluxHess.kron(GGN(), scaled, X, Y)
    @test_throws ArgumentError Bridge.loss(mlp, θ, permutedims(X), permutedims(Y), "hinge", "sum")
    @test_throws ArgumentError Bridge.gradient(mlp, θ, permutedims(X), permutedims(Y), "mse", "max")
    @test_throws ArgumentError Bridge.to_spec(Bridge.build_model("Chain(Dense(2 => 2, x -> x^3))"))
    @test Bridge.error_class(ArgumentError("a")) == "input"
    @test Bridge.error_class(DimensionMismatch("a")) == "input"
    @test Bridge.error_class(LoadError("model source", 1, ArgumentError("a"))) == "input"
    @test Bridge.error_class(ErrorException("a")) == "backend"
    @test Bridge.error_class(MethodError(+, ())) == "backend"

    # to_spec round trip: the weights come back in θ's order.
    spec = Bridge.to_spec(mlp)
    @test [l["kind"] for l in spec] == ["dense", "dense"]
    @test spec[1]["activation"] == "tanh" && spec[2]["activation"] == "identity"
    @test vcat(vec(spec[1]["weight"]), spec[1]["bias_values"], vec(spec[2]["weight"]), spec[2]["bias_values"]) == θ

end
