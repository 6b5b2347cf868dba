# Checks FluxHess against the fixtures that fluxhess's JAX backend wrote
# (tests/fixtures/*.toml, from tests/fixtures/make_fixtures.py), each route against
# the other and against per-sample Zygote references, plus identities that need no
# reference. Run from the repository root:
#
#     julia --project=julia -e 'import Pkg; Pkg.instantiate()'   # once
#     julia --project=julia julia/test/runtests.jl               # or: ] test FluxHess
#
# Test and TOML are standard libraries (found through @stdlib on the load path).

using Test, TOML, LinearAlgebra
using FluxHess
using FluxHess: Flux, Zygote, ForwardDiff

const FIXTURES = normpath(joinpath(@__DIR__, "..", "..", "tests", "fixtures"))

# Flux uses tanh_fast/sigmoid_fast (a few ulps from Base's); JAX rounds differently
# again. Comparisons are normwise (isapprox on arrays).
const RTOL = 1e-10
const ATOL = 1e-12

# A fixture array: `data` in Fortran order and NumPy's `shape`.
array(t) = reshape(Float64.(t["data"]), Tuple(Int.(t["shape"])))

const WORST = Dict{String,Float64}()  # quantity => largest relative error seen
const KINDS = ("hessian" => Hessian(), "ggn" => GGN(), "ef" => EmpiricalFisher())

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
    for (name, kind) in KINDS
        check("hvp_$name", FluxHess.hvp(model, θ, X, Y, V, lossname, agg, kind), want("hvp_$name"))
        check("diagonal_$name", FluxHess.diagonal(model, θ, X, Y, lossname, agg, kind),
              want("diagonal_$name"))
    end
    for (name, kind) in KINDS[2:3]
        got = FluxHess.kron(model, θ, X, Y, lossname, agg, kind)
        expected = ex["kron_$name"]
        @test length(got) == length(expected)
        for ((A, G), e) in zip(got, expected)
            check("kron_$(name)_A", A, array(e["A"]))
            check("kron_$(name)_G", G, array(e["G"]))
        end
    end
    # Every fixture is a Dense chain: the structured route ran above. The generic
    # route must give the same numbers.
    p = FluxHess.problem(model, θ, X, Y, lossname, agg)
    @test FluxHess.route(p.model) isa DenseChain
    for (name, kind) in KINDS
        matrix = name == "ef" ? "empirical_fisher" : name
        check("generic_$matrix", FluxHess.curvature(kind, Generic(), p), want(matrix))
        check("generic_diagonal_$name", FluxHess.diagonal(kind, Generic(), p), want("diagonal_$name"))
    end
    check("generic_param_jacobian",
          FluxHess._param_jacobian(Generic(), p.model, p.re, p.θ, p.X), want("param_jacobian"))
    # Both ways to the generic route's Jacobian rows: layer by layer and forward mode.
    C = size(p.Y, 1)
    rows = FluxHess.output_jacobian_rows(p.re, p.θ, p.X)
    check("forward_mode_rows", rows, reshape(permutedims(want("param_jacobian"), (2, 1, 3)), :, length(θ)))
    @test FluxHess._layer_chain(p.model, p.θ) !== nothing
    check("layer_rows", FluxHess.jacobian_rows(p.model, p.re, p.θ, p.X, C), rows)
    check("generic_laplacian",
          permutedims(FluxHess._laplacian(Generic(), p.model, p.X)), want("laplacian"))
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


# Per-sample references by Zygote (the generic route's forward-mode Jacobians and the
# structured route's factors take other roads): J_n, g_n, Λ_n one sample at a time.
function per_sample_references(model, θ, X, Y, lossname, agg)
    p = FluxHess.problem(model, θ, X, Y, lossname, agg)
    P, N = length(p.θ), size(p.X, 2)
    G, F = zeros(P, P), zeros(P, P)
    J = zeros(N, size(p.Y, 1), P)
    for n in 1:N
        xn, yn = p.X[:, n:n], p.Y[:, n:n]
        Jn = Zygote.jacobian(ϑ -> vec(p.re(ϑ)(xn)), p.θ)[1]
        ŷn = vec(p.model(xn))
        Λn = ForwardDiff.hessian(u -> p.ℓ(reshape(u, :, 1), yn; agg = sum), ŷn)
        gn = Zygote.gradient(ϑ -> p.ℓ(p.re(ϑ)(xn), yn; agg = sum), p.θ)[1]
        G .+= p.s .* (transpose(Jn) * Λn * Jn)
        F .+= p.s .* (gn * transpose(gn))
        J[n, :, :] = Jn
    end
    H = ForwardDiff.hessian(FluxHess.objective(p), p.θ)      # forward over forward
    return (; hessian = H, ggn = G, empirical_fisher = F, param_jacobian = J)
end

# Input derivatives one sample at a time by ForwardDiff.
function per_sample_input_references(model, θ, X)
    re = Flux.destructure(model)[2]
    m = re(θ)
    f(x) = vec(m(reshape(x, size(X, 2), 1)))
    Jx = stack([ForwardDiff.jacobian(f, X[n, :]) for n in axes(X, 1)]; dims = 1)
    Hx = stack([reshape(ForwardDiff.jacobian(x -> vec(ForwardDiff.jacobian(f, x)), X[n, :]),
                        :, size(X, 2), size(X, 2)) for n in axes(X, 1)]; dims = 1)
    Δ = [sum(Hx[n, c, i, i] for i in axes(Hx, 3)) for n in axes(Hx, 1), c in axes(Hx, 2)]
    return (; input_jacobian = Jx, input_hessian = Hx, laplacian = Δ)
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


    @testset "generic route: Conv, anonymous layers" begin
        conv = FluxHess.build_model("""
            Chain(x -> reshape(x, 3, 3, 1, :), Conv((2, 2), 1 => 2, tanh),
                  Flux.flatten, Dense(8 => 3, softplus), Dense(3 => 2))"""; seed = 3)
        anon = FluxHess.build_model("Chain(Dense(3 => 4, tanh), x -> 2 .* x .+ 1, Dense(4 => 2), softmax)";
                                    seed = 4)
        pinn = FluxHess.build_model("Chain(Dense(3 => 5, tanh), x -> x .^ 2, Dense(5 => 1))"; seed = 5)
        cases = ((conv, 9, "mse", "sum"), (anon, 3, "crossentropy", "mean"),
                 (pinn, 3, "mse", "mean"))
        for (model, d, lossname, agg) in cases
            θ = FluxHess.parameters(model)
            X = reshape(sin.(1:7d) ./ 2, 7, d)
            C = size(FluxHess.forward(model, θ, X), 2)
            Y = lossname == "mse" ? reshape(cos.(1:7C), 7, C) : repeat([0.2 0.8], 7)
            @test FluxHess.route(FluxHess.problem(model, θ, X, Y, lossname, agg).model) isa Generic
            ref = per_sample_references(model, θ, X, Y, lossname, agg)
            for (name, kind) in KINDS
                matrix = name == "ef" ? :empirical_fisher : Symbol(name)
                M = FluxHess.curvature(kind, model, θ, X, Y, lossname, agg)
                @test issymmetric(M)
                @test M ≈ getproperty(ref, matrix) rtol = 1e-9 atol = 1e-12
                @test FluxHess.diagonal(model, θ, X, Y, lossname, agg, kind) ≈ diag(M) rtol = 1e-9 atol = 1e-12
            end
            @test FluxHess.param_jacobian(model, θ, X) ≈ ref.param_jacobian rtol = 1e-10
            q = FluxHess.problem(model, θ, X, Y, lossname, agg)
            @test FluxHess.output_jacobian_rows(q.re, q.θ, q.X) ≈
                  reshape(permutedims(ref.param_jacobian, (2, 1, 3)), :, length(θ)) rtol = 1e-10
            @test FluxHess._layer_chain(q.model, q.θ) !== nothing
            inputs = per_sample_input_references(model, θ, X)
            @test FluxHess.input_jacobian(model, θ, X) ≈ inputs.input_jacobian rtol = 1e-10
            @test FluxHess.input_hessian(model, θ, X) ≈ inputs.input_hessian rtol = 1e-9 atol = 1e-12
            @test FluxHess.laplacian(model, θ, X) ≈ inputs.laplacian rtol = 1e-9 atol = 1e-12
        end
    end

    @testset "generic route: a layer that mixes samples" begin
        # Centring over the batch couples the samples: the layer-by-layer rows must not be
        # used (they assume each layer acts on each sample alone); forward mode is exact.
        mixing = FluxHess.build_model("Chain(Dense(2 => 3, tanh), x -> x .- sum(x; dims = 2) ./ size(x, 2), Dense(3 => 1))")
        θ = FluxHess.parameters(mixing)
        X = reshape(sin.(1:10), 5, 2)
        p = FluxHess.problem(mixing, θ, X, reshape(cos.(1:5), 5, 1), "mse", "sum")
        lc = FluxHess._layer_chain(p.model, p.θ)
        @test lc !== nothing && FluxHess._layer_rows(lc, p.X, [ones(1, 5)]) === nothing
        J = FluxHess.jacobian_rows(p.model, p.re, p.θ, p.X, 1)
        @test J ≈ Zygote.jacobian(ϑ -> vec(p.re(ϑ)(p.X)), p.θ)[1] rtol = 1e-12
    end

    @testset "structured route: deeper chains, chunks and panels" begin
        # Three and four Dense layers exercise the Hessian's non-adjacent cross terms;
        # a tiny budget forces chunks of samples and panels of rows.
        deep = FluxHess.build_model("""
            Chain(Dense(3 => 4, tanh), Base.Fix1(broadcast, softplus), Dense(4 => 3, gelu; bias=false),
                  Dense(3 => 5, sigmoid), Dense(5 => 2), logsoftmax)"""; seed = 6)
        θ = FluxHess.parameters(deep)
        X = reshape(sin.(1:33) ./ 2, 11, 3)
        Y = repeat([0.3 0.7], 11)
        p = FluxHess.problem(deep, θ, X, Y, "logitcrossentropy", "sum")
        @test FluxHess.route(p.model) isa DenseChain
        ref = per_sample_references(deep, θ, X, Y, "logitcrossentropy", "sum")
        for (name, kind) in KINDS
            matrix = name == "ef" ? :empirical_fisher : Symbol(name)
            want = getproperty(ref, matrix)
            @test FluxHess.curvature(kind, deep, θ, X, Y, "logitcrossentropy", "sum") ≈ want rtol = 1e-9
            dc, P = FluxHess.route(p.model), length(θ)
            H = Matrix{Float64}(undef, P, P)
            scr = FluxHess._Scratch(Float64)
            if kind isa EmpiricalFisher
                for (c, cols) in enumerate(FluxHess._sample_chunks(11, 1, 4))   # chunks of 4 samples
                    F = FluxHess._factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s)
                    FluxHess._gram!(H, FluxHess._sample_gradient_rows(dc, F), p.s, c > 1)
                end
            else
                for (c, cols) in enumerate(FluxHess._sample_chunks(11, 1, 4))
                    F = FluxHess._factors(kind, dc, p.X[:, cols], p.Y[:, cols], p.ℓ, p.s)
                    FluxHess._assemble!(H, F, dc, c > 1, 1, scr)          # one row per panel
                end
            end
            @test FluxHess._mirror_lower!(H) ≈ want rtol = 1e-9
            @test FluxHess.diagonal(deep, θ, X, Y, "logitcrossentropy", "sum", kind) ≈ diag(want) rtol = 1e-9
        end
        @test FluxHess.param_jacobian(deep, θ, X) ≈ ref.param_jacobian rtol = 1e-10
        # The forward Laplacian against per-sample ForwardDiff (no softmax head here).
        mlp = FluxHess.build_model("Chain(Dense(4 => 6, tanh), Dense(6 => 5, swish), Dense(5 => 2, softplus))"; seed = 7)
        θ = FluxHess.parameters(mlp)
        X = reshape(cos.(1:36) ./ 3, 9, 4)
        @test FluxHess.laplacian(mlp, θ, X) ≈ per_sample_input_references(mlp, θ, X).laplacian rtol = 1e-10
        @test FluxHess.input_hessian(mlp, θ, X) ≈ per_sample_input_references(mlp, θ, X).input_hessian rtol = 1e-10
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
        for (_, kind) in KINDS
            M = FluxHess.curvature(kind, mlp, θ, X, Y, "mse", "mean")
            # Into a caller's buffer, in either memory order (as NumPy hands one over).
            P = length(θ)
            @test FluxHess.curvature!(Matrix{Float64}(undef, P, P), kind, mlp, θ, X, Y, "mse", "mean") == M
            @test FluxHess.curvature!(transpose(Matrix{Float64}(undef, P, P)), kind, mlp, θ, X, Y, "mse", "mean") == M
            @test_throws DimensionMismatch FluxHess.curvature!(zeros(P, P + 1), kind, mlp, θ, X, Y, "mse", "mean")
            @test_throws DimensionMismatch FluxHess.curvature!(zeros(Float32, P, P), kind, mlp, θ, X, Y, "mse", "mean")
            @test issymmetric(M)
            @test FluxHess.hvp(mlp, θ, X, Y, V, "mse", "mean", kind) ≈ M * V rtol = 1e-10
            @test FluxHess.diagonal(mlp, θ, X, Y, "mse", "mean", kind) ≈ diag(M) rtol = 1e-10
        end
        # KFAC is exact for one sample: A ⊗ G is the layer's [vec(W); b] block.
        x1, y1 = X[1:1, :], Y[1:1, :]
        for (kind, M) in ((GGN(), FluxHess.ggn(mlp, θ, x1, y1, "mse", "sum")),
                          (EmpiricalFisher(), FluxHess.empirical_fisher(mlp, θ, x1, y1, "mse", "sum")))
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
        @test_throws ArgumentError FluxHess.kron(scaled, FluxHess.parameters(scaled), X, Y, "mse", "sum", GGN())
        @test_throws ArgumentError FluxHess.kron(mlp, θ, X, Y, "mse", "sum", Hessian())
        # to_spec round trip: the weights come back in θ's order.
        spec = FluxHess.to_spec(mlp)
        @test [l["kind"] for l in spec] == ["dense", "dense"]
        @test spec[1]["activation"] == "tanh" && spec[2]["activation"] == "identity"
        @test vcat(vec(spec[1]["weight"]), spec[1]["bias_values"],
                   vec(spec[2]["weight"]), spec[2]["bias_values"]) == θ
    end

    @testset "layers identified by what they do" begin
        identified(f) = (r = FluxHess.identify(f); r isa Dict ? get(r, "activation", r["kind"]) : nothing)
        for (f, name) in ((x -> Flux.relu.(x), "relu"), (x -> max.(x, 0), "relu"), (x -> Flux.σ.(x), "sigmoid"),
                          (x -> x .* Flux.σ.(x), "swish"), (x -> Flux.softmax(x), "softmax"), (identity, "identity"),
                          (Base.Fix1(broadcast, x -> 1 / (1 + exp(-x))), "sigmoid"),
                          (x -> reshape(x, :, size(x, 4)), "flatten"), (Flux.flatten, "flatten"))
            @test identified(f) == name
        end
        # Near misses: equal to an activation near 0, not for large magnitudes or not at all.
        for f in (x -> Flux.relu6.(x), x -> clamp.(tanh.(x), -0.99, 0.99), x -> 2 .* Flux.σ.(x), x -> clamp.(x, -10, 10),
                  x -> reshape(permutedims(x, (2, 1, 3, 4)), :, size(x, 4)))
            @test identified(f) === nothing
        end
        @test FluxHess.activation_name(x -> tanh(x)) == "tanh"
        @test FluxHess.activation_name(x -> min(max(x, 0), 6)) === nothing
        # The seed model: a 4-d input through InputShape, every quantity as on the flattened twin.
        seed = FluxHess.build_model("Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1), x -> σ.(x))")
        twin = FluxHess.build_model("Chain(Dense(2, 5), Dense(5, 1, σ))")
        shaped = FluxHess.with_input_shape(seed, (1, 1, 2))
        θs = FluxHess.parameters(seed)
        Xs, Ys = randn(7, 2), Float64.(rand(7, 1) .> 0.5)
        for kind in (Hessian(), GGN(), EmpiricalFisher())
            @test FluxHess.curvature(kind, shaped, θs, Xs, Ys, "crossentropy", "sum") ≈
                  FluxHess.curvature(kind, twin, θs, Xs, Ys, "crossentropy", "sum") rtol = 1e-12
        end
        @test [get(l["spec"] === nothing ? Dict() : l["spec"], "kind", nothing) for l in FluxHess.layout(seed)] ==
              ["flatten", nothing, nothing, "activation"]
        @test [b["offset"] for l in FluxHess.layout(seed) for b in l["blocks"]] == [0, 10, 15, 20]
        @test FluxHess.parameters(FluxHess.sublayers(seed, 3, 4)) == θs[16:21]
        @test_throws ArgumentError FluxHess.layout(FluxHess.build_model("d = Dense(2 => 2); Chain(d, d)"))
    end
end

println("\nlargest normwise relative error per quantity (FluxHess.jl vs the JAX fixtures):")
for (q, e) in sort!(collect(WORST); by = first)
    println(rpad(q, 24), " ", e)
end
