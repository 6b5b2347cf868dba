# Parameter-free layers identified by what they do, a model's layout and its parts (what
# the Python package reads to name θ's blocks and to write a Flux model as a spec).

let  # this file's names stay its own

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
    # The seed model: a 4-d input, every quantity as on the flattened twin.
    seed = Bridge.build_model("Chain(x -> reshape(x, :, size(x, 4)), Dense(2, 5), Dense(5, 1), x -> σ.(x))")
    twin = Bridge.build_model("Chain(Dense(2, 5), Dense(5, 1, σ))")
    θs = Bridge.parameters(seed)
    Xs, Ys = randn(2, 7), Float64.(rand(1, 7) .> 0.5)
    for (_, kind) in KINDS
        @test curvature(kind, seed, reshape(Xs, 1, 1, 2, 7), Ys; loss = Flux.crossentropy, agg = sum) ≈
              curvature(kind, twin, Xs, Ys; loss = Flux.crossentropy, agg = sum, params = θs) rtol = 1e-12
        # NumPy's (N, 2, 1, 1) is Julia's (1, 1, 2, N): the Bridge's with_input_shape.
        @test Bridge.curvature!(zeros(21, 21), Bridge.with_input_shape(seed, (1, 1, 2)), θs, permutedims(Xs),
                                permutedims(Ys), "crossentropy", "sum", kind; workspace = 2^20) ≈
              curvature(kind, twin, Xs, Ys; loss = Flux.crossentropy, agg = sum, params = θs) rtol = 1e-12
    end
    @test [get(l["spec"] === nothing ? Dict() : l["spec"], "kind", nothing) for l in Bridge.layout(seed)] ==
          ["flatten", nothing, nothing, "activation"]
    @test [b["offset"] for l in Bridge.layout(seed) for b in l["blocks"]] == [0, 10, 15, 20]
    @test Bridge.parameters(Bridge.sublayers(seed, 3, 4)) == θs[16:21]
    @test_throws ArgumentError Bridge.layout(Bridge.build_model("d = Dense(2 => 2); Chain(d, d)"))

end
