# The generic route's exact Hessian, layer by layer, against ForwardDiff.hessian of the
# whole batch loss: each kind of layer, smooth activations, skip connections, test-mode
# layers, samples in chunks, and the models it takes as one block.

let  # this file's names stay its own

    # ForwardDiff over ForwardDiff of L(θ) = loss(re(θ)(X), Y; agg): no Zygote, no blocks.
    function reference(model, X, Y; loss = Flux.mse, agg = sum)
        θ, re = Flux.destructure(model)
        return ForwardDiff.hessian(ϑ -> loss(re(ϑ)(X), Y; agg), θ)
    end

    images(d, c, n) = reshape(sin.(1:d*d*c*n) ./ 2, d, d, c, n)

    models = [
        ("conv, maxpool, dense (relu)", Flux.f64(Chain(Conv((3, 3), 1 => 2, relu), MaxPool((2, 2)),
                                                       Flux.flatten, Dense(2 => 3, relu), Dense(3 => 2))),
         reshape(sin.(1:5*5*4) ./ 2, 5, 5, 1, 4)),
        ("skip connection, tanh/softplus, test-mode BatchNorm and Dropout",
         Flux.f64(Chain(Dense(3 => 4, tanh), SkipConnection(Dense(4 => 4, softplus), +), BatchNorm(4),
                        Dropout(0.3), Dense(4 => 2))),
         reshape(cos.(1:18), 3, 6)),
        # The branches' pools see the layer's input as floats and a Dual cotangent.
        ("pools in branches of Parallel and SkipConnection",
         Flux.f64(Chain(CrossCor((3,), 2 => 3, relu; pad = 1),
                        Parallel(+, CrossCor((1,), 3 => 3; bias = false), MeanPool((3,); pad = 1, stride = 1)),
                        SkipConnection(MaxPool((3,); pad = 1, stride = 1), +), Conv((2,), 3 => 2, tanh),
                        Flux.flatten, Dense(10 => 2))),
         reshape(sin.(1:48) ./ 2, 6, 2, 4)),
    ]
    for (name, model, X) in models
        @testset "$name" begin
            Flux.testmode!(model)
            C = size(model(X), 1)
            N = size(X, ndims(X))
            Y = reshape(sin.(1:C*N) ./ 3, C, N)
            want = reference(model, X, Y)
            H = curvature(Hessian(), model, X, Y; agg = sum)
            @test issymmetric(H)
            @test H ≈ want rtol = 1e-10
            # One sample at a time (the smallest workspace): the same sum.
            @test curvature(Hessian(), model, X, Y; agg = sum, workspace = 1) ≈ want rtol = 1e-10
        end
    end

    # A layer mixing the samples (centring over the batch): the whole batch at once.
    mixing = Flux.f64(Chain(Dense(2 => 3, tanh), x -> x .- sum(x; dims = 2) ./ size(x, 2), Dense(3 => 1)))
    X, Y = reshape(sin.(1:10), 2, 5), reshape(cos.(1:5), 1, 5)
    @test curvature(Hessian(), mixing, X, Y; agg = sum, workspace = 1) ≈ reference(mixing, X, Y) rtol = 1e-10

    # Tied weights (a layer used twice): not a chain of its layers' own parameters, one block.
    shared = Dense(3 => 3, tanh)
    tied = Flux.f64(Chain(shared, shared, Dense(3 => 1)))
    X, Y = reshape(sin.(1:12), 3, 4), reshape(cos.(1:4), 1, 4)
    @test curvature(Hessian(), tied, X, Y; agg = sum) ≈ reference(tied, X, Y) rtol = 1e-10

    # The products of the Hessian's Duals go through BLAS: each combination against the
    # values and partials multiplied out.
    w = 3
    D = FluxHess.HDual{Float64,w}
    dual(V, Ps) = [D(V[i], ForwardDiff.Partials(ntuple(t -> Ps[t][i], w))) for i in CartesianIndices(V)]
    parts(M) = (ForwardDiff.value.(M), [ForwardDiff.partials.(M, t) for t in 1:w])
    A0, As = reshape(sin.(1:12), 4, 3), [reshape(cos.(t:t+11), 4, 3) for t in 1:w]
    B0, Bs = reshape(cos.(1:15), 3, 5), [reshape(sin.(2t:2t+14), 3, 5) for t in 1:w]
    A, B = dual(A0, As), dual(B0, Bs)
    for (a, b, v, ps) in ((A, B, A0 * B0, [As[t] * B0 + A0 * Bs[t] for t in 1:w]),
                          (A, B0, A0 * B0, [As[t] * B0 for t in 1:w]),
                          (A0, B, A0 * B0, [A0 * Bs[t] for t in 1:w]),
                          (transpose(permutedims(A)), permutedims(B0)', A0 * B0, [As[t] * B0 for t in 1:w]),
                          (A0, permutedims(B)', A0 * B0, [A0 * Bs[t] for t in 1:w]))
        value, partials = parts(a * b)
        @test value ≈ v rtol = 1e-14
        @test all(partials[t] ≈ ps[t] for t in 1:w)
    end
    C = dual(ones(4, 5), [fill(Float64(t), 4, 5) for t in 1:w])
    value, partials = parts(mul!(copy(C), A, B0, 2.0, 3.0))
    @test value ≈ 2 .* (A0 * B0) .+ 3 rtol = 1e-14
    @test all(partials[t] ≈ 2 .* (As[t] * B0) .+ 3t for t in 1:w)

end
