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

    # Convolutional layers: the model-zoo LeNet-5 on 28 × 28 × 1, described as Flux stores it.
    lenet = Bridge.build_model("Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Conv((5, 5), 6 => 16, relu), " *
                               "MaxPool((2, 2)), Flux.flatten, Dense(256 => 120, relu), Dense(120 => 84, relu), Dense(84 => 10))")
    spec = Bridge.to_spec(lenet; input_shape = (28, 28, 1))
    @test [l["kind"] for l in spec] == ["conv", "maxpool", "conv", "maxpool", "flatten", "dense", "dense", "dense"]
    @test spec[3]["weight"] == lenet[3].weight && spec[3]["bias_values"] == lenet[3].bias
    @test (spec[3]["kernel"], spec[3]["in"], spec[3]["out"], spec[3]["activation"]) == ([5, 5], 6, 16, "relu")
    @test (spec[3]["pad"], spec[3]["stride"], spec[3]["dilation"], spec[3]["groups"]) == ([0, 0, 0, 0], [1, 1], [1, 1], 1)
    @test (spec[2]["window"], spec[2]["stride"], spec[2]["pad"]) == ([2, 2], [2, 2], [0, 0, 0, 0])
    # Blocks: kinds, SamePad resolved (lo, hi per axis), a flatten recognised on the shape it gets there.
    block = Bridge.build_model("Chain(CrossCor((3, 2), 1 => 2; pad = SamePad(), stride = (1, 2)), " *
                               "SkipConnection(Chain(Conv((1, 1), 2 => 2, tanh; groups = 2), Dropout(0.2)), +), " *
                               "Parallel(+, identity, Chain(MeanPool((2, 1); pad = (1, 0, 0, 0), stride = 1), LayerNorm(4, 2, 2))), " *
                               "AdaptiveMeanPool((2, 1)), GlobalMeanPool(), x -> reshape(x, :, size(x, 4)), Dense(2 => 1))")
    spec = Bridge.to_spec(block; input_shape = (4, 3, 1))
    @test [l["kind"] for l in spec] == ["crosscor", "skip", "parallel", "adaptivemeanpool", "globalmeanpool", "flatten", "dense"]
    @test spec[1]["pad"] == [1, 1, 1, 0] && spec[1]["stride"] == [1, 2] && spec[1]["groups"] == 1
    @test [l["kind"] for l in spec[2]["layers"]] == ["conv", "dropout"] && spec[2]["layers"][1]["groups"] == 2
    @test spec[2]["layers"][2]["p"] == 0.2
    @test isempty(spec[3]["branches"][1]) && [l["kind"] for l in spec[3]["branches"][2]] == ["meanpool", "layernorm"]
    @test spec[3]["branches"][2][2]["size"] == [4, 2, 2] && spec[4]["out"] == [2, 1]
    # Norm layers in test mode: BatchNorm's running statistics; LayerNorm's ϵ as this Flux adds it.
    bn = Bridge.build_model("let l = BatchNorm(3, tanh); l.μ .= [1, 2, 3]; l.σ² .= [4, 5, 6]; l end")
    d = only(Bridge.to_spec(bn))
    @test (d["mean"], d["var"], d["beta"], d["gamma"], d["activation"]) == ([1, 2, 3], [4, 5, 6], bn.β, bn.γ, "tanh")
    @test d["eps"] == Float64(1f-5)
    x = randn(3, 4)
    normalised(x, e) = (x .- mean(x; dims = 1)) ./ sqrt.(mean(abs2.(x .- mean(x; dims = 1)); dims = 1) .+ e)
    ln = Bridge.build_model("LayerNorm(3; eps = 0.1)")
    e = only(Bridge.to_spec(ln))["eps"]
    @test ln(x) ≈ normalised(x, e) rtol = 1e-14
    @test FluxHess.layernorm_eps(0.1) in (0.1, 0.1^2)
    # A spec's LayerNorm(…; eps) computes sqrt(var + eps) on this Flux.
    twin = Bridge.build_model("LayerNorm(3; eps = 0.1)"; spec = true)
    @test twin(x) ≈ normalised(x, 0.1) rtol = 1e-14
    @test Bridge.parameters(twin) == Bridge.parameters(ln)
    # Refused, naming the layer (nested: "layer 2.2.1").
    refused(src; kw...) = try Bridge.to_spec(Bridge.build_model(src); kw...); "" catch e; sprint(showerror, e) end
    @test occursin("layer 2 (GlobalMaxPool()) cannot be identified",
                   refused("Chain(Conv((3, 3), 1 => 2), GlobalMaxPool(), Flux.flatten)"; input_shape = (5, 5, 1)))
    @test occursin(r"layer 1 .*ConvTranspose.*has parameters and no spec twin", refused("Chain(ConvTranspose((2, 2), 1 => 1))"))
    @test occursin("no running statistics", refused("BatchNorm(2; track_stats = false)"))
    @test occursin("joins its branches with", refused("SkipConnection(Dense(2 => 2), (a, b) -> a .+ b)"))
    @test occursin("layer 2.2.1 (Dense(2 => 2, #",
                   refused("Chain(Dense(2 => 2), Parallel(+, identity, Chain(Dense(2 => 2, x -> x^3))))"))
    # A CNN's layout: each layer's blocks in θ's order.
    table = Bridge.layout(block)
    @test [[b["name"] for b in l["blocks"]] for l in table] ==
          [["weight", "bias"], ["layers.layers.1.weight", "layers.layers.1.bias"], ["layers.2.layers.2.diag.scale", "layers.2.layers.2.diag.bias"],
           [], [], [], ["weight", "bias"]]
    @test sum(prod(b["shape"]) for l in table for b in l["blocks"]) == length(Bridge.parameters(block))

end
