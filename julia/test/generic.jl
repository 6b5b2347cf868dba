# Any other Flux model, and functions between the layers: Conv layers, anonymous layers,
# a layer that mixes the samples.

let  # this file's names stay its own

    conv = Bridge.build_model("""
        Chain(x -> reshape(x, 3, 3, 1, :), Conv((2, 2), 1 => 2, tanh),
              Flux.flatten, Dense(8 => 3, softplus), Dense(3 => 2))"""; seed = 3)
    anon = Bridge.build_model("Chain(Dense(3 => 4, tanh), x -> 2 .* x .+ 1, Dense(4 => 2), softmax)"; seed = 4)
    pinn = Bridge.build_model("Chain(Dense(3 => 5, tanh), x -> x .^ 2, Dense(5 => 1))"; seed = 5)
    # Functions that act on each sample but not entry by entry, or not alike on every entry:
    # no scalar function stands for them.
    centred = Bridge.build_model("Chain(Dense(3 => 4, tanh), x -> x .- sum(x; dims = 1) ./ size(x, 1), Dense(4 => 2))"; seed = 7)
    scaled = Bridge.build_model("Chain(Dense(3 => 4, tanh), x -> x .* [1.0, 2.0, 3.0, 4.0], Dense(4 => 2))"; seed = 8)
    # Functions between the layers of a CNN: elementwise (the convolutional route's, once checked
    # on the batch), and a reshape in place of Flux.flatten (no scalar function).
    convanon = Bridge.build_model("""
        Chain(x -> reshape(x, 3, 3, 1, :), Conv((2, 2), 1 => 2), x -> tanh.(x), Flux.flatten,
              Dense(8 => 3), x -> x .^ 2 ./ 2, Dense(3 => 2))"""; seed = 9)
    reshaped = Bridge.build_model("""
        Chain(x -> reshape(x, 3, 3, 1, :), Conv((2, 2), 1 => 2, relu), x -> reshape(x, :, size(x, 4)),
              Dense(8 => 2))"""; seed = 10)
    for (model, d, loss, agg) in ((conv, 9, Flux.mse, sum), (anon, 3, Flux.crossentropy, mean),
                                  (pinn, 3, Flux.mse, mean), (centred, 3, Flux.mse, sum),
                                  (scaled, 3, Flux.mse, mean), (convanon, 9, Flux.mse, sum),
                                  (reshaped, 9, Flux.mse, mean))
        X = reshape(sin.(1:7d) ./ 2, d, 7)
        C = size(model(X), 1)
        Y = loss === Flux.mse ? reshape(cos.(1:7C), C, 7) : repeat([0.2, 0.8], 1, 7)
        ref = per_sample_references(model, X, Y, loss, agg)
        for (name, kind) in KINDS
            M = curvature(kind, model, X, Y; loss, agg)
            @test issymmetric(M)
            @test M ≈ getproperty(ref, Symbol(MATRIX[name])) rtol = 1e-9 atol = 1e-12
            @test diagonal(kind, model, X, Y; loss, agg) ≈ diag(M) rtol = 1e-9 atol = 1e-12
        end
        @test param_jacobian(model, X) ≈ ref.param_jacobian rtol = 1e-10
        inputs = per_sample_input_references(model, X)
        @test input_jacobian(model, X) ≈ inputs.input_jacobian rtol = 1e-10
        @test input_hessian(model, X) ≈ inputs.input_hessian rtol = 1e-9 atol = 1e-12
        @test laplacian(model, X) ≈ inputs.laplacian rtol = 1e-9 atol = 1e-12
    end

    # Centring over the batch couples the samples: the Jacobian rows must come from the whole
    # batch (layer-by-layer rows assume each layer acts on each sample alone).
    mixing = Bridge.build_model("Chain(Dense(2 => 3, tanh), x -> x .- sum(x; dims = 2) ./ size(x, 2), Dense(3 => 1))")
    X = reshape(sin.(1:10), 2, 5)
    Y = reshape(cos.(1:5), 1, 5)
    θ, re = Flux.destructure(mixing)
    J = Zygote.jacobian(ϑ -> vec(re(ϑ)(X)), θ)[1]                        # (N, P): one output
    @test param_jacobian(mixing, X) ≈ permutedims(reshape(J, 1, 5, :), (1, 3, 2)) rtol = 1e-12
    @test curvature(GGN(), mixing, X, Y; agg = sum) ≈ 2 .* transpose(J) * J rtol = 1e-10   # mse: Λ = 2I
    @test curvature(Hessian(), mixing, X, Y; agg = sum) ≈
          Zygote.hessian(ϑ -> Flux.mse(re(ϑ)(X), Y; agg = sum), θ) rtol = 1e-10

    # Products with several columns through a mutable layer (BatchNorm): each column's own
    # cotangent, not the sum of those before it.
    normed = Bridge.build_model("""
        let bn = BatchNorm(3, tanh); bn.μ .= [0.1, -0.2, 0.3]; bn.σ² .= [1.5, 0.7, 2.0]
            Chain(Dense(2 => 3), bn, Dense(3 => 2)) end"""; seed = 6)
    X = reshape(sin.(1:12), 2, 6)
    Y = reshape(cos.(1:12), 2, 6)
    V = reshape(cos.(1:3length(Bridge.parameters(normed))), :, 3)
    for (name, kind) in KINDS
        @test hvp(kind, normed, X, Y, V) ≈ curvature(kind, normed, X, Y) * V rtol = 1e-10
    end

end
