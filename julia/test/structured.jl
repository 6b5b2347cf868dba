# Chains of Dense layers: deeper chains (the Hessian's non-adjacent cross terms), chunks
# of samples and panels of rows, the forward Laplacian.

let  # this file's names stay its own

    deep = Bridge.build_model("""
        Chain(Dense(3 => 4, tanh), Base.Fix1(broadcast, softplus), Dense(4 => 3, gelu; bias=false),
              Dense(3 => 5, sigmoid), Dense(5 => 2), logsoftmax)"""; seed = 6)
    X = reshape(sin.(1:33) ./ 2, 3, 11)
    Y = repeat([0.3, 0.7], 1, 11)
    kw = (; loss = Flux.logitcrossentropy, agg = sum)
    ref = per_sample_references(deep, X, Y, Flux.logitcrossentropy, sum)
    for (name, kind) in KINDS
        want = getproperty(ref, Symbol(MATRIX[name]))
        @test curvature(kind, deep, X, Y; kw...) ≈ want rtol = 1e-9
        # A workspace of one byte: one sample per chunk, one row per panel.
        @test curvature(kind, deep, X, Y; kw..., workspace = 1) ≈ want rtol = 1e-9
        @test diagonal(kind, deep, X, Y; kw...) ≈ diag(want) rtol = 1e-9
    end
    @test param_jacobian(deep, X) ≈ ref.param_jacobian rtol = 1e-10

    # The forward Laplacian against per-sample ForwardDiff (no softmax head here).
    mlp = Bridge.build_model("Chain(Dense(4 => 6, tanh), Dense(6 => 5, swish), Dense(5 => 2, softplus))"; seed = 7)
    X = reshape(cos.(1:36) ./ 3, 4, 9)
    inputs = per_sample_input_references(mlp, X)
    @test laplacian(mlp, X) ≈ inputs.laplacian rtol = 1e-10
    @test input_hessian(mlp, X) ≈ inputs.input_hessian rtol = 1e-10
    @test input_jacobian(mlp, X) ≈ inputs.input_jacobian rtol = 1e-12

end
