# Convolutional chains (src/conv.jl): GGN, EF, the Hessian, their diagonals,
# param_jacobian and KFAC against per-sample Zygote/ForwardDiff references, on 1-d, 2-d and 3-d
# CNNs with stride, padding, dilation, groups, pools, piecewise-linear and curved activations,
# Conv and CrossCor.

let  # this file's names stay its own

    # Pre-activation twins of the taps: the layer without its activation.
    preact(l::Conv) = Conv(l.weight, l.bias, identity; stride = l.stride, pad = l.pad, dilation = l.dilation, groups = l.groups)
    preact(l::CrossCor) = CrossCor(l.weight, l.bias, identity; stride = l.stride, pad = l.pad, dilation = l.dilation)
    preact(l::Dense) = Dense(l.weight, l.bias, identity)
    istap(l) = l isa Union{Conv,CrossCor,Dense}
    withweight(l::Conv, w) = Conv(identity, w, l.bias, l.stride, l.pad, l.dilation, l.groups)
    withweight(l::CrossCor, w) = CrossCor(identity, w, l.bias, l.stride, l.pad, l.dilation)
    withweight(l::Dense, w) = Dense(w, l.bias, identity)

    # The layers run on one sample with εs[m] added to tap m's pre-activation.
    function perturbed(layers, x, εs)
        a, m = x, 0
        for l in layers
            if istap(l)
                m += 1
                a = l.σ.(preact(l)(a) .+ εs[m])
            else
                a = l(a)
            end
        end
        return a
    end

    # The taps' inputs and pre-activations on one sample.
    function taps_seen(layers, x)
        inputs, zs, a = [], [], x
        for l in layers
            if istap(l)
                push!(inputs, a)
                push!(zs, preact(l)(a))
            end
            a = l(a)
        end
        return inputs, zs
    end

    # KFAC by Zygote, one sample at a time: G from the Jacobians of the output in ε, A from
    # the patches read off the Jacobian of each tap's pre-activation in its weight.
    function kron_reference(model, X, Y, loss, agg, kind)
        layers = model.layers
        taps = [l for l in layers if istap(l)]
        N, C = size(X, ndims(X)), size(Y, 1)
        s = loss_factor(loss, agg, C, N)
        sample(n) = selectdim(X, ndims(X), n:n)
        zs = last(taps_seen(layers, sample(1)))
        A = [zeros(0, 0) for _ in taps]
        G = [zeros(0, 0) for _ in taps]
        for n in 1:N
            ins = first(taps_seen(layers, sample(n)))
            εs = [zeros(size(z)) for z in zs]
            f = vec(perturbed(layers, sample(n), εs))
            yn = Y[:, n:n]
            Λ = ForwardDiff.hessian(u -> loss(reshape(u, :, 1), yn; agg = sum), f)
            for (m, l) in enumerate(taps)
                Bm = Zygote.jacobian(e -> vec(perturbed(layers, sample(n), [k == m ? e : εs[k] for k in eachindex(εs)])), εs[m])[1]
                O = l isa Dense ? size(l.weight, 1) : size(l.weight, ndims(l.weight))
                # Bm's columns: z's entries, channel-major last for a convolution, first for Dense.
                Bs = l isa Dense ? reshape(Bm, C, O, :) : permutedims(reshape(Bm, C, :, O), (1, 3, 2))
                Gm = zeros(O, O)
                for p in axes(Bs, 3)
                    B = Bs[:, :, p]
                    Gm .+= kind isa GGN ? s .* (transpose(B) * Λ * B) :
                        (δ = transpose(B) * Zygote.gradient(u -> loss(reshape(u, :, 1), yn; agg = sum), f)[1];
                         s .* (δ * transpose(δ)))
                end
                # Patches: ∂z[position, output 1]/∂W[:, output 1], a column of ones for the bias.
                Jw = Zygote.jacobian(w -> vec(withweight(l, w)(ins[m])), l.weight)[1]
                U = l isa Dense ? Jw[1:O:end, 1:O:end] : reshape(Jw, :, O, length(l.weight) ÷ O, O)[:, 1, :, 1]
                Ū = l.bias isa AbstractArray ? hcat(U, ones(size(U, 1))) : U
                Am = transpose(Ū) * Ū ./ (N * size(Ū, 1))
                A[m] = n == 1 ? Am : A[m] .+ Am
                G[m] = n == 1 ? Gm : G[m] .+ Gm
            end
        end
        return collect(zip(A, G))
    end

    # (source, sample shape in Julia order, C)
    models = [
        ("Chain(CrossCor((3, 3), 2 => 3, relu; pad = 1), MaxPool((2, 2)), Conv((2, 2), 3 => 4, tanh; stride = 2), " *
         "Flux.flatten, Dense(4 => 3))", (6, 6, 2), 3),
        ("Chain(Conv((3,), 2 => 4, tanh; dilation = 2, pad = 2), MeanPool((2,)), Conv((3,), 4 => 4, relu; groups = 2, bias = false), " *
         "Flux.flatten, Dense(8 => 5, tanh), Dense(5 => 2))", (8, 2), 2),
        ("Chain(CrossCor((2, 3), 1 => 3, tanh; stride = (1, 2), pad = (1, 0, 0, 1)), GlobalMeanPool(), Flux.flatten, " *
         "Dense(3 => 3), softmax)", (5, 7, 1), 3),
        ("Chain(Conv((2, 2), 2 => 2, relu), AdaptiveMaxPool((2, 2)), Base.Fix1(broadcast, tanh), Conv((2, 2), 2 => 3), Flux.flatten)",
         (5, 5, 2), 3),
        # A Dense layer on a convolution's (width, channels) output: the channels are its positions.
        ("Chain(Conv((3,), 2 => 4, tanh; pad = 1), Dense(6 => 3, relu), Flux.flatten, Dense(12 => 2))", (6, 2), 2),
    ]
    losses = [(Flux.mse, sum), (Flux.logitcrossentropy, mean), (Flux.crossentropy, sum), (Flux.mse, mean),
              (Flux.mse, sum)]
    for (k, ((source, dims, C), (loss, agg))) in enumerate(zip(models, losses))
        net = Bridge.build_model(source; seed = k)
        model = FluxHess.with_input_shape(net, dims)
        N = 6
        X = reshape(sin.(1:prod(dims)*N) ./ 2, :, N)
        Y = loss === Flux.crossentropy || loss === Flux.logitcrossentropy ?
            Matrix(Flux.onehotbatch(mod1.(1:N, C), 1:C)) .* 0.8 .+ 0.2 / C : reshape(cos.(1:C*N), C, N)
        @test FluxHess.route(model) isa FluxHess.ConvChain
        ref = per_sample_references(model, X, Y, loss, agg)
        kw = (; loss, agg)
        for (name, kind) in KINDS
            want = getproperty(ref, Symbol(MATRIX[name]))
            @test curvature(kind, model, X, Y; kw...) ≈ want rtol = 1e-10
            @test diagonal(kind, model, X, Y; kw...) ≈ diag(want) rtol = 1e-10
        end
        # A workspace of one byte: one sample per chunk.
        @test curvature(GGN(), model, X, Y; kw..., workspace = 1) ≈ ref.ggn rtol = 1e-10
        @test param_jacobian(model, X) ≈ ref.param_jacobian rtol = 1e-10
        @test FluxHess.gradient(model, X, Y; kw...) ≈ Zygote.gradient(ϑ -> loss(Flux.destructure(model)[2](ϑ)(X), Y; agg),
                                                                       Flux.destructure(model)[1])[1] rtol = 1e-10
        occursin("groups", source) && continue   # KFAC refuses grouped convolutions
        for kind in (GGN(), EmpiricalFisher())
            got = FluxHess.kron(kind, model, X, Y; kw...)
            want = kron_reference(net, reshape(X, dims..., N), Y, loss, agg, kind)
            @test length(got) == length(want)
            for ((A, G), (Aw, Gw)) in zip(got, want)
                @test A ≈ Aw rtol = 1e-10
                @test G ≈ Gw rtol = 1e-10
            end
        end
    end

    # Piecewise-linear chains (relu, leakyrelu, pools, flatten, test-mode Dropout): the
    # Hessian as the GGN plus the taps' cross terms, against ForwardDiff.hessian of the loss;
    # then chains with curved stages, whose own terms it adds.
    piecewise = [
        ("Chain(CrossCor((3, 3), 2 => 3, relu; pad = (1, 0, 0, 1)), MaxPool((2, 2)), " *
         "Conv((2, 2), 3 => 4, leakyrelu; stride = 2), Flux.flatten, Dense(4 => 3))", (6, 6, 2), 3),
        ("Chain(Conv((3,), 2 => 4, relu; dilation = 2, pad = 2), MeanPool((2,)), " *
         "Conv((3,), 4 => 4, relu; groups = 2, bias = false), Flux.flatten, Dense(8 => 5, relu), Dropout(0.5), Dense(5 => 2))",
         (8, 2), 2),
        ("Chain(CrossCor((2, 3), 1 => 3; stride = (1, 2), pad = (1, 0, 0, 1)), AdaptiveMaxPool((2, 2)), " *
         "Base.Fix1(broadcast, relu), Conv((2, 2), 3 => 3, relu), Flux.flatten, Dense(3 => 3))", (5, 7, 1), 3),
        ("Chain(Conv((3,), 2 => 4, relu; pad = 1), Dense(6 => 3, relu), Flux.flatten, Dense(12 => 2))", (6, 2), 2),
        ("Chain(Conv((2, 2), 2 => 3, relu; dilation = 2), MeanPool((2, 2); stride = 1), Conv((2, 2), 3 => 2, groups = 1), " *
         "GlobalMaxPool(), Flux.flatten, Dense(2 => 3, relu), Dense(3 => 2))", (6, 6, 2), 2),
        # 3-d patches and max pool
        ("Chain(Conv((2, 2, 2), 1 => 2, relu; pad = (1, 0, 0, 1, 1, 0)), MaxPool((2, 2, 2)), Flux.flatten, Dense(16 => 2))",
         (4, 4, 4, 1), 2),
        # overlapping max-pool windows, which may choose one entry twice
        ("Chain(CrossCor((2, 2), 1 => 2, relu), MaxPool((2, 2); stride = 1), Conv((2, 2), 2 => 2, relu), " *
         "Flux.flatten, Dense(8 => 2))", (5, 5, 1), 2),
    ]
    pl_losses = [(Flux.mse, sum), (Flux.logitcrossentropy, mean), (Flux.logitcrossentropy, sum), (Flux.mse, mean),
                 (Flux.mse, sum), (Flux.mse, sum), (Flux.logitcrossentropy, mean)]
    # Curved elementwise stages: σ, tanh, softplus, elu, swish; right after a tap, after a pool,
    # on a Dense tap over N-d inputs.
    curved = [
        ("Chain(CrossCor((3, 3), 2 => 3, sigmoid; pad = 1), MaxPool((2, 2)), " *
         "Conv((2, 2), 3 => 4, softplus; stride = 2), Flux.flatten, Dense(4 => 3, tanh))", (6, 6, 2), 3),
        ("Chain(Conv((3,), 2 => 4, tanh; dilation = 2, pad = 2), MeanPool((2,)), Base.Fix1(broadcast, sigmoid), " *
         "Conv((3,), 4 => 4, elu; groups = 2, bias = false), Flux.flatten, Dense(8 => 5, swish), Dense(5 => 2))", (8, 2), 2),
        ("Chain(Conv((2, 2), 2 => 2), AdaptiveMaxPool((2, 2)), Base.Fix1(broadcast, tanh), Conv((2, 2), 2 => 3, relu), " *
         "Flux.flatten)", (5, 5, 2), 3),
        # A Dense tap on a convolution's (width, channels) output: a channel's entries are not contiguous.
        ("Chain(Conv((3,), 2 => 4, tanh; pad = 1), Dense(6 => 3, sigmoid), Flux.flatten, Dense(12 => 2))", (6, 2), 2),
        ("Chain(Conv((3, 3), 1 => 4, tanh), Flux.flatten, Dense(36 => 4, tanh), Dense(4 => 2))", (5, 5, 1), 2),
    ]
    curved_losses = [(Flux.mse, sum), (Flux.logitcrossentropy, mean), (Flux.mse, mean), (Flux.logitcrossentropy, sum),
                     (Flux.mse, sum)]
    for (k, ((source, dims, C), (loss, agg))) in enumerate(zip([piecewise; curved], [pl_losses; curved_losses]))
        model = FluxHess.with_input_shape(Bridge.build_model(source; seed = 10 + k), dims)
        N = 5
        X = reshape(sin.(1:prod(dims)*N) ./ 2, :, N)
        Y = loss === Flux.logitcrossentropy ?
            Matrix(Flux.onehotbatch(mod1.(1:N, C), 1:C)) .* 0.8 .+ 0.2 / C : reshape(cos.(1:C*N), C, N)
        r = FluxHess.route(model)
        @test r isa FluxHess.ConvChain
        θ, re = Flux.destructure(model)
        want = ForwardDiff.hessian(ϑ -> loss(re(ϑ)(X), Y; agg), θ)
        kw = (; loss, agg)
        @test curvature(Hessian(), model, X, Y; kw...) ≈ want rtol = 1e-10
        # The cross terms run on one BLAS thread: the caller's threads are left as they were.
        threads = LinearAlgebra.BLAS.get_num_threads()
        LinearAlgebra.BLAS.set_num_threads(2)
        try
            @test curvature(Hessian(), model, X, Y; kw..., workspace = 1) ≈ want rtol = 1e-10
            @test LinearAlgebra.BLAS.get_num_threads() == 2
        finally
            LinearAlgebra.BLAS.set_num_threads(threads)
        end
        @test diagonal(Hessian(), model, X, Y; kw...) ≈ diag(want) rtol = 1e-10
    end

    # Max-pool windows with tied maxima (a constant image through a convolution): the route
    # must pick the entry Flux's own gradient picks, so it is checked against ForwardDiff
    # over Zygote's gradient, which goes through the same max-pool pullback.
    tied = FluxHess.with_input_shape(Bridge.build_model(
        "Chain(CrossCor((2, 2), 1 => 2, relu), MaxPool((2, 2)), Flux.flatten, Dense(8 => 2))"; seed = 3), (5, 5, 1))
    Xt = ones(25, 2) .* [1.0 -0.5]
    Yt = reshape(cos.(1:4), 2, 2)
    θt, ret = Flux.destructure(tied)
    total(ϑ) = Flux.mse(ret(ϑ)(Xt), Yt; agg = sum)
    want = ForwardDiff.jacobian(ϑ -> Zygote.gradient(total, ϑ)[1], θt)
    @test FluxHess.route(tied) isa FluxHess.ConvChain
    @test curvature(Hessian(), tied, Xt, Yt; loss = Flux.mse, agg = sum) ≈ want rtol = 1e-10
    @test diagonal(Hessian(), tied, Xt, Yt; loss = Flux.mse, agg = sum) ≈ diag(want) rtol = 1e-10

    grouped = FluxHess.with_input_shape(Bridge.build_model("Chain(Conv((3,), 2 => 4; groups = 2), Flux.flatten)"), (5, 2))
    @test_throws ArgumentError FluxHess.kron(GGN(), grouped, randn(10, 3), randn(12, 3))

end
