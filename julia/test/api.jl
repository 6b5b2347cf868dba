# The Julia API's conventions: Flux's loss functions and agg, features × batch, targets,
# N-d inputs, the caller's model left alone, exports that clash with nothing.

let  # this file's names stay its own

    model = Bridge.build_model("Chain(Dense(3 => 4, tanh), Dense(4 => 2))"; seed = 2)
    θ, re = Flux.destructure(model)
    X, Y = reshape(sin.(1:30), 3, 10), reshape(cos.(1:20), 2, 10)

    # The curvature is that of the loss Flux computes, with its default agg = mean.
    L(ϑ) = Flux.mse(re(ϑ)(X), Y)
    @test FluxHess.gradient(model, X, Y) ≈ Zygote.gradient(L, θ)[1] rtol = 1e-12
    @test curvature(Hessian(), model, X, Y) ≈ ForwardDiff.hessian(L, θ) rtol = 1e-9
    @test curvature(GGN(), model, X, Y) ≈ curvature(GGN(), model, X, Y; agg = sum) ./ 20 rtol = 1e-12   # 1/(N·C)

    labels = Flux.onehotbatch([1, 2, 1, 2, 2, 1, 1, 2, 1, 2], 1:2)      # a OneHotMatrix
    Lc(ϑ) = Flux.logitcrossentropy(re(ϑ)(X), labels)
    H = curvature(Hessian(), model, X, labels; loss = Flux.logitcrossentropy)
    @test H ≈ ForwardDiff.hessian(Lc, θ) rtol = 1e-9
    @test H ≈ curvature(Hessian(), model, X, labels; loss = Flux.logitcrossentropy, agg = sum) ./ 10 rtol = 1e-12  # 1/N

    # A vector of targets for a model with one output.
    m1 = Bridge.build_model("Chain(Dense(3 => 4, tanh), Dense(4 => 1))")
    y = cos.(1:10)
    @test curvature(GGN(), m1, X, y) == curvature(GGN(), m1, X, reshape(y, 1, :))
    @test_throws DimensionMismatch curvature(GGN(), m1, X[:, 1], y)

    # N-d inputs: the batch is the last dimension, each sample reaches the model in its shape.
    conv = Bridge.build_model("Chain(Conv((2, 2), 1 => 2, tanh), Flux.flatten, Dense(8 => 1))"; seed = 3)
    θ4, re4 = Flux.destructure(conv)
    X4, y5 = reshape(sin.(1:45), 3, 3, 1, 5), reshape(cos.(1:5), 1, 5)
    @test curvature(Hessian(), conv, X4, y5; agg = sum) ≈
          ForwardDiff.hessian(ϑ -> Flux.mse(re4(ϑ)(X4), y5; agg = sum), θ4) rtol = 1e-9
    @test size(input_jacobian(conv, X4)) == (1, 9, 5)
    @test size(param_jacobian(conv, X4)) == (1, length(θ4), 5)

    # The caller's model is never changed: its parameters, and its mode (Dropout stays automatic).
    drop = Flux.f64(Chain(Dense(3 => 4, tanh), Dropout(0.5), Dense(4 => 2)))
    before = copy(Flux.destructure(drop)[1])
    @test curvature(Hessian(), drop, X, Y) == curvature(Hessian(), drop, X, Y)    # test mode: no dropout
    @test Flux.destructure(drop)[1] == before
    @test drop.layers[2].active === nothing

    # `params` gives θ without rebuilding the model; the model's own θ is the default.
    @test curvature(GGN(), model, X, Y; params = θ) == curvature(GGN(), model, X, Y)
    @test curvature(GGN(), model, X, Y; params = 2 .* θ) ≈ curvature(GGN(), re(2 .* θ), X, Y) rtol = 1e-12

    # Exports: none that Flux, Zygote or LinearAlgebra export (`using FluxHess, Zygote` keeps
    # `hessian` unambiguous); those are public and called qualified.
    exported(m) = Set(filter(n -> Base.isexported(m, n), names(m)))
    @test isempty(intersect(exported(FluxHess), union(exported(Flux), exported(Zygote), exported(LinearAlgebra))))
    @test :hessian ∉ exported(FluxHess) && :gradient ∉ exported(FluxHess) && :kron ∉ exported(FluxHess)

end
