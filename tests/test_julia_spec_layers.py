"""FluxModel.to_spec's Python half: Julia's layer descriptions (``FluxHess.to_spec``, sizes in
Julia order, Flux's arrays) become spec layers and θ blocks. Fed here with the descriptions
Julia gives of the spec's own Flux twin, built by hand, so it runs without Julia."""

from __future__ import annotations

import numpy as np

import fluxhess as fh
from fluxhess._backends.julia.spec_layers import spec_layers


def _describe(layer, arrays):
    """What FluxHess.to_spec describes for ``layer`` (the Flux twin of a spec layer)."""
    rev = lambda t: list(reversed(t))  # noqa: E731
    pads = lambda pairs: [v for pair in reversed(pairs) for v in pair]  # noqa: E731
    if isinstance(layer, fh.Conv):
        return {"kind": "crosscor" if not layer.flips_kernel else "conv", "kernel": rev(layer.kernel_size),
                "in": layer.in_channels, "out": layer.out_channels, "activation": layer.activation,
                "stride": rev(layer.stride), "pad": pads(layer.pads), "dilation": rev(layer.dilation),
                "groups": layer.groups, "bias": layer.bias, "weight": arrays.pop(0),
                "bias_values": arrays.pop(0) if layer.bias else None}
    if isinstance(layer, fh.MeanPool):
        return {"kind": type(layer).__name__.lower(), "window": rev(layer.window), "stride": rev(layer.stride), "pad": pads(layer.pads)}
    if isinstance(layer, fh.BatchNorm):
        return {"kind": "batchnorm", "channels": layer.channels, "activation": layer.activation, "eps": layer.eps,
                "affine": True, "mean": list(layer.mean), "var": list(layer.var), "beta": arrays.pop(0), "gamma": arrays.pop(0)}
    if isinstance(layer, fh.LayerNorm):
        return {"kind": "layernorm", "size": rev(layer.shape), "activation": layer.activation, "eps": layer.eps,
                "affine": True, "scale": arrays.pop(0), "bias_values": arrays.pop(0)}
    if isinstance(layer, fh.SkipConnection):
        return {"kind": "skip", "layers": [_describe(l, arrays) for l in layer.layers]}
    if isinstance(layer, fh.Parallel):
        return {"kind": "parallel", "branches": [[_describe(l, arrays) for l in b] for b in layer.branches]}
    if isinstance(layer, fh.Dense):
        return {"kind": "dense", "in": layer.in_features, "out": layer.out_features, "activation": layer.activation,
                "bias": layer.bias, "weight": arrays.pop(0), "bias_values": arrays.pop(0) if layer.bias else None}
    simple = {fh.Flatten: {"kind": "flatten"}, fh.GlobalMeanPool: {"kind": "globalmeanpool"}}
    if type(layer) in simple:
        return simple[type(layer)]
    if isinstance(layer, fh.AdaptiveMeanPool):
        return {"kind": "adaptivemeanpool", "out": rev(layer.output_size)}
    if isinstance(layer, fh.Dropout):
        return {"kind": "dropout", "p": layer.p}
    return {"kind": "activation", "activation": layer.name}


def test_julia_descriptions_rebuild_the_spec_and_its_theta():
    model = fh.Chain(
        fh.Conv((5, 3), 1, 2, "relu", stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2)),
        fh.BatchNorm(2, mean=(0.5, -1.0), var=(2.0, 0.25)),
        fh.SkipConnection(fh.CrossCor((3, 3), 2, 2, padding="same"), fh.Dropout(0.25)),
        fh.Parallel([fh.Conv((1, 1), 2, 2, groups=2)], ()),
        fh.MaxPool((2, 2), stride=1), fh.MeanPool((2, 1)), fh.AdaptiveMeanPool((2, 2)),
        fh.LayerNorm((2, 2), "tanh", eps=1e-6), fh.GlobalMeanPool(), fh.Flatten(), fh.Dense(2, 1),
        input_shape=(1, 12, 11),
    )
    theta = np.random.default_rng(0).normal(size=model.num_params)
    arrays = list(model.unflatten(theta).values())  # Flux's arrays, in θ order
    descriptions = [_describe(layer, arrays) for layer in model.layers]
    layers, blocks = spec_layers(descriptions)
    rebuilt = fh.Chain(*layers, input_shape=(1, 12, 11))
    # Flux stores SamePad() resolved, so the twin has the explicit pads.
    assert rebuilt.to_flux() == model.to_flux().replace("pad=SamePad()", "pad=(1, 1, 1, 1)")
    np.testing.assert_array_equal(rebuilt.flatten(blocks), theta)


def test_cnn_fixtures_are_the_jax_engines_numbers():
    """julia/test/fixtures/cnn/ (for the Julia side) hold what the JAX engine computes today."""
    import sys
    import tomllib
    from pathlib import Path

    folder = Path(__file__).resolve().parent / "fixtures"
    sys.path.insert(0, str(folder))
    try:
        import make_fixtures
    finally:
        sys.path.remove(str(folder))
    array = lambda t: np.reshape(np.asarray(t["data"], dtype=np.float64), t["shape"], order="F")  # noqa: E731
    cases = {name: (model, loss, agg) for name, model, loss, agg in make_fixtures.CNN_CASES}
    paths = sorted((make_fixtures.OUT / "cnn").glob("*.toml"))
    assert [p.stem for p in paths] == sorted(cases)
    for path in paths:
        fx = tomllib.loads(path.read_text(encoding="utf-8"))
        model, loss, agg = cases[fx["name"]]
        assert fx["source"] == model.to_flux() and tuple(fx["input_shape"]) == model.input_shape
        theta, X, Y = (array(fx[k]) for k in ("theta", "X", "Y"))
        kw = dict(loss=loss, agg=agg, backend="jax")
        np.testing.assert_allclose(fh.forward(model, theta, X, backend="jax"), array(fx["expected"]["forward"]), rtol=1e-12)
        np.testing.assert_allclose(fh.gradient(model, theta, X, Y, **kw), array(fx["expected"]["gradient"]), rtol=1e-10, atol=1e-13)
