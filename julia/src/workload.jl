#############################################################################
#                     What precompilation runs (PrecompileTools)            #
#############################################################################
#
# Every quantity, through the Bridge the Python package calls, on small Chains of Dense
# layers with each activation of the spec, in Float64 and Float32, with each loss and the
# usual heads, and 1, 2 and 10 outputs (the Dual widths), and on a small CNN (Float64),
# so that a fresh process calls compiled code; and the curvatures through the Julia API.
# The Dense-chain route holds the layers type-erased (see `DenseChain`, `Problem`), so
# this code serves Dense chains of any depth and width; what goes through Zygote (hvp,
# the generic route) compiles once per model type. Turn it off while developing with the
# preference `Preferences.set_preferences!(FluxHess, "precompile_workload" => false)`.

# A matrix as the Python package passes one (`Bridge.numpy_view`): NumPy index order over
# C-ordered memory.
_as_numpy(A::Matrix) = transpose(permutedims(A))

# Every quantity through the Bridge, as the Python package calls it (NumPy index order).
function _workload(model, X, Y, lossname, agg)
    B = Bridge
    θ = B.parameters(model)
    T, P = eltype(θ), length(θ)
    X, Y = _as_numpy(X), _as_numpy(Y)
    V = _as_numpy(reshape(collect(range(-one(T), one(T); length = 2P)), P, 2))
    H = _as_numpy(Matrix{T}(undef, P, P))
    B.forward(model, θ, X)
    B.loss(model, θ, X, Y, lossname, agg)
    B.gradient(model, θ, X, Y, lossname, agg)
    for kind in (Hessian(), GGN(), EmpiricalFisher())
        B.curvature!(H, model, θ, X, Y, lossname, agg, kind; workspace = WORKSPACE)
        B.diagonal(model, θ, X, Y, lossname, agg, kind)
        B.hvp(model, θ, X, Y, V, lossname, agg, kind)
    end
    B.kron(model, θ, X, Y, lossname, agg, GGN())
    B.kron(model, θ, X, Y, lossname, agg, EmpiricalFisher())
    B.param_jacobian(model, θ, X)
    B.input_jacobian(model, θ, X)
    B.input_hessian(model, θ, X)
    B.laplacian(model, θ, X)
end

@setup_workload begin
    X = [0.3 -1.2; 0.7 0.4; -0.5 0.9]       # (N, d) = (3, 2)
    Y = [0.1 0.9; 0.8 0.2; 0.4 0.6]         # (N, C) = (3, 2), rows sum to 1
    activations = (identity, Flux.relu, tanh, Flux.sigmoid, Flux.softplus, Flux.elu,
                   Flux.leakyrelu, Flux.swish, Flux.gelu)
    heads = (identity, Flux.softmax, Flux.logsoftmax, Base.Fix1(broadcast, Flux.sigmoid))
    @compile_workload begin
        for T in (Float64, Float32)
            Xt, Yt = T.(X), T.(Y)
            for σ in activations
                model = prepare(Flux.Chain(Flux.Dense(2 => 3, σ), Flux.Dense(3 => 2)), T)
                _workload(model, Xt, Yt, "mse", "sum")
            end
            for (head, lossname) in zip(heads, ("logitcrossentropy", "crossentropy",
                                                 "logitcrossentropy", "binarycrossentropy"))
                model = prepare(Flux.Chain(Flux.Dense(2 => 3, tanh), Flux.Dense(3 => 2), head), T)
                _workload(model, Xt, Yt, lossname, "mean")
            end
            model = prepare(Flux.Chain(Flux.Dense(2 => 3, tanh), Flux.Dense(3 => 2)), T)
            _workload(model, Xt, Yt, "logitbinarycrossentropy", "sum")
            # Dual widths 1 and 12 (see `_width`): one output, and ten classes.
            model = prepare(Flux.Chain(Flux.Dense(2 => 3, tanh), Flux.Dense(3 => 1)), T)
            _workload(model, Xt, Yt[:, 1:1], "mse", "sum")
            Y10 = repeat(T.(0.1:0.1:1.0)' ./ 5.5, 3)
            model = prepare(Flux.Chain(Flux.Dense(2 => 3, tanh), Flux.Dense(3 => 10)), T)
            _workload(model, Xt, Y10, "logitcrossentropy", "mean")
            # A CNN as a spec Chain writes one (4×4 images, one channel): the convolutional
            # route, in the default Float64 only (it compiles for about four times as long
            # as a Dense chain).
            if T === Float64
                cnn = with_input_shape(prepare(Flux.Chain(Flux.CrossCor((3, 3), 1 => 2, Flux.relu; pad = (1, 1, 1, 1)),
                                                          Flux.MaxPool((2, 2)), Flux.flatten, Flux.Dense(8 => 2)), T), (4, 4, 1))
                _workload(cnn, T.(reshape(sin.(1:48), 3, 16)), Yt, "logitcrossentropy", "mean")
            end
            # The Julia API, features × batch, with Flux's loss functions.
            model = prepare(Flux.Chain(Flux.Dense(2 => 3, tanh), Flux.Dense(3 => 2)), T)
            for kind in (Hessian(), GGN(), EmpiricalFisher())
                curvature(kind, model, permutedims(Xt), permutedims(Yt); loss = Flux.mse, agg = sum)
                curvature(kind, model, permutedims(Xt), permutedims(Yt); loss = Flux.logitcrossentropy)
            end
        end
    end
end
