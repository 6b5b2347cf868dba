# FluxHess against the fixtures fluxhess's JAX backend wrote (test/fixtures/*.toml): the
# Bridge as Python calls it (NumPy index order, names), then the Julia API on the same
# problems (features × batch, Flux's loss functions), by both routes.

let  # this file's names stay its own

    # A fixture array: `data` in Fortran order and NumPy's `shape`.
    array(t) = reshape(Float64.(t["data"]), Tuple(Int.(t["shape"])))

    LOSS_FUNCTIONS = Dict("mse" => Flux.mse, "crossentropy" => Flux.crossentropy,
                          "logitcrossentropy" => Flux.logitcrossentropy,
                          "binarycrossentropy" => Flux.binarycrossentropy,
                          "logitbinarycrossentropy" => Flux.logitbinarycrossentropy)
    AGG_FUNCTIONS = Dict("sum" => sum, "mean" => mean)

    function bridge_fixture(fx, model, θ, X, Y, V, want)
        lossname, agg = fx["loss"], fx["agg"]
        P = length(θ)
        @test length(Bridge.parameters(model)) == P
        check("forward", Bridge.forward(model, θ, X), want("forward"))
        # Any AbstractMatrix in NumPy index order works, not only an Array: Python passes a
        # numpy_view of C-ordered memory.
        C_order = permutedims(X)
        GC.@preserve C_order check("forward", Bridge.forward(model, θ, Bridge.numpy_view(
            UInt(pointer(C_order)), Float64, size(X)...)), want("forward"))
        got_loss = Bridge.loss(model, θ, X, Y, lossname, agg)
        WORST["loss"] = max(get(WORST, "loss", 0.0), abs(got_loss - fx["expected"]["loss"]) / abs(fx["expected"]["loss"]))
        @test got_loss ≈ fx["expected"]["loss"] rtol = RTOL
        check("gradient", Bridge.gradient(model, θ, X, Y, lossname, agg), want("gradient"))
        for (name, kind) in KINDS
            out = Matrix{Float64}(undef, P, P)
            check(MATRIX[name], Bridge.curvature!(out, model, θ, X, Y, lossname, agg, kind; workspace = 2^20),
                  want(MATRIX[name]))
            check("hvp_$name", Bridge.hvp(model, θ, X, Y, V, lossname, agg, kind), want("hvp_$name"))
            check("diagonal_$name", Bridge.diagonal(model, θ, X, Y, lossname, agg, kind), want("diagonal_$name"))
        end
        for (name, kind) in KINDS[2:3]
            haskey(fx, "input_shape") && continue  # KFAC covers Dense chains: no kron in the CNN fixtures
            got = Bridge.kron(model, θ, X, Y, lossname, agg, kind)
            expected = fx["expected"]["kron_$name"]
            @test length(got) == length(expected)
            for ((A, G), e) in zip(got, expected)
                check("kron_$(name)_A", A, array(e["A"]))
                check("kron_$(name)_G", G, array(e["G"]))
            end
        end
        check("param_jacobian", Bridge.param_jacobian(model, θ, X), want("param_jacobian"))
        check("input_jacobian", Bridge.input_jacobian(model, θ, X), want("input_jacobian"))
        check("input_hessian", Bridge.input_hessian(model, θ, X), want("input_hessian"))
        check("laplacian", Bridge.laplacian(model, θ, X), want("laplacian"))
        if haskey(fx["expected"], "divergence")
            check("divergence", Bridge.divergence(model, θ, X), want("divergence"))
        else
            @test_throws DimensionMismatch Bridge.divergence(model, θ, X)
        end
    end

    function julia_api_fixture(fx, model, θ, X, Y, V, want)
        loss, agg = LOSS_FUNCTIONS[fx["loss"]], AGG_FUNCTIONS[fx["agg"]]
        Xj, Yj = permutedims(X), permutedims(Y)           # features × batch
        generic = Chain(model, opaque)                    # the same model by the generic route
        for (name, kind) in KINDS
            matrix = MATRIX[name]
            check("api_$matrix", curvature(kind, model, Xj, Yj; loss, agg, params = θ), want(matrix))
            check("generic_$matrix", curvature(kind, generic, Xj, Yj; loss, agg, params = θ), want(matrix))
            check("generic_diagonal_$name", diagonal(kind, generic, Xj, Yj; loss, agg, params = θ), want("diagonal_$name"))
            check("api_hvp_$name", hvp(kind, model, Xj, Yj, V; loss, agg, params = θ), want("hvp_$name"))
        end
        check("api_gradient", FluxHess.gradient(model, Xj, Yj; loss, agg, params = θ), want("gradient"))
        J = permutedims(want("param_jacobian"), (2, 3, 1))   # (C, P, N)
        check("api_param_jacobian", param_jacobian(model, Xj; params = θ), J)
        check("generic_param_jacobian", param_jacobian(generic, Xj; params = θ), J)
        check("api_input_jacobian", input_jacobian(model, Xj; params = θ), permutedims(want("input_jacobian"), (2, 3, 1)))
        check("api_input_hessian", input_hessian(model, Xj; params = θ), permutedims(want("input_hessian"), (2, 3, 4, 1)))
        check("api_laplacian", laplacian(model, Xj; params = θ), permutedims(want("laplacian")))
        check("generic_laplacian", laplacian(generic, Xj; params = θ), permutedims(want("laplacian")))
    end

    # The fixtures of Dense chains, then those of CNNs (cnn/: one sample's `input_shape` in
    # NumPy order, X holding the samples flattened in C order, which is the model's
    # Julia input of shape reverse(input_shape) column by column).
    tomls(dir) = sort(filter(endswith(".toml"), readdir(dir; join = true)))
    files = tomls(joinpath(@__DIR__, "fixtures"))
    cnn_files = tomls(joinpath(@__DIR__, "fixtures", "cnn"))
    @test !isempty(files) && !isempty(cnn_files)
    SPEC_KINDS = ("dense", "activation", "flatten")
    CNN_KINDS = (SPEC_KINDS..., "conv", "crosscor", "meanpool", "maxpool", "adaptivemeanpool", "globalmeanpool",
                 "batchnorm", "layernorm", "dropout", "skip", "parallel")
    for file in [files; cnn_files]
        fx = TOML.parsefile(file)
        @testset "$(fx["name"])" begin
            shape = reverse(Int.(get(fx, "input_shape", Int[])))
            # The JAX spec's LayerNorm is sqrt(var + eps), whatever Flux computes for the same source.
            written = Bridge.build_model(fx["source"]; T = Float64, spec = true)
            model = isempty(shape) ? written : Bridge.with_input_shape(written, shape)
            θ, X, Y, V = array(fx["theta"]), array(fx["X"]), array(fx["Y"]), array(fx["V"])
            want(q) = array(fx["expected"][q])
            bridge_fixture(fx, model, θ, X, Y, V, want)
            julia_api_fixture(fx, model, θ, X, Y, V, want)
            # The spec comes back from the Flux model, with its weights.
            spec = isempty(shape) ? Bridge.to_spec(written) : Bridge.to_spec(written; input_shape = shape)
            @test !isempty(spec)
            @test all(l -> l["kind"] in (isempty(shape) ? SPEC_KINDS : CNN_KINDS), spec)
        end
    end

end
