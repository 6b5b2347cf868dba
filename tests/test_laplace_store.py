"""save/load: a reloaded approximation answers every question as the original did."""

import numpy as np
import pytest

import fluxhess as fh
from fluxhess import InputError


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_save_load_round_trip(tmp_path, structure):
    rng = np.random.default_rng(0)
    model = fh.Chain(fh.Flatten(), fh.Dense(4, 5, "relu"), fh.Dense(5, 2))
    X, y = rng.normal(size=(20, 2, 2)), rng.normal(size=(20, 2))
    la = fh.Laplace(model, model.init(1), "regression", structure=structure, subset=["layers.2.weight"],
                    prior_precision=[3.0], sigma_noise=0.4, temperature=0.9, backend="jax").fit(X, y)
    path = tmp_path / "la.npz"
    la.save(path)
    back = fh.Laplace.load(path)
    assert (back.likelihood, back.structure, back.subset, back.sigma_noise, back.temperature) == (
        la.likelihood, la.structure, la.subset, la.sigma_noise, la.temperature)
    assert back.model == model
    np.testing.assert_array_equal(back.posterior_precision, la.posterior_precision)
    assert float(back.log_marginal_likelihood()) == float(la.log_marginal_likelihood())
    np.testing.assert_array_equal(back.predictive(X[:3]).variance, la.predictive(X[:3]).variance)
    np.testing.assert_array_equal(back.sample(4, seed=2), la.sample(4, seed=2))


def test_unfitted_round_trip_and_foreign_files(tmp_path):
    model = fh.Chain.mlp([2, 3, 2])
    fh.Laplace(model, model.init(), backend="jax").save(tmp_path / "a.npz")
    assert not fh.Laplace.load(tmp_path / "a.npz").fitted
    np.savez(tmp_path / "b.npz", x=np.ones(3))
    with pytest.raises(InputError, match="not a saved fluxhess Laplace approximation"):
        fh.Laplace.load(tmp_path / "b.npz")


def _saved_without(tmp_path, entry: str, meta_key: bool):
    """A file save wrote, with one array entry (or one key of its meta) removed."""
    import json

    model = fh.Chain.mlp([2, 3, 1])
    la = fh.Laplace(model, model.init(), "regression", backend="jax").fit(np.ones((4, 2)), np.zeros(4))
    la.save(tmp_path / "full.npz")
    with np.load(tmp_path / "full.npz") as f:
        data = dict(f)
    if meta_key:
        meta = json.loads(str(data["meta"]))
        del meta[entry]
        data["meta"] = np.array(json.dumps(meta))
    else:
        del data[entry]
    np.savez(tmp_path / "broken.npz", **data)
    return tmp_path / "broken.npz"


@pytest.mark.parametrize(
    "write, why",
    [
        (lambda p: np.save(p / "x.npy", np.ones(3)) or p / "x.npy", "single array of shape \\(3,\\)"),
        (lambda p: (p / "x.txt").write_text("not numpy") and p / "x.txt", "not a NumPy .npz archive"),
        (lambda p: _saved_without(p, "params", meta_key=False), "entry 'params' is missing"),
        (lambda p: _saved_without(p, "likelihood", meta_key=True), "entry 'likelihood' is missing"),
        (lambda p: p / "absent.npz", "FileNotFoundError"),
    ],
    ids=["npy", "text", "array-entry-missing", "meta-entry-missing", "absent"],
)
def test_load_of_anything_else_says_it_is_not_a_saved_laplace(tmp_path, write, why):
    path = write(tmp_path)
    with pytest.raises(InputError, match=f"not a saved fluxhess Laplace approximation \\(.*{why}"):
        fh.Laplace.load(path)


def test_save_and_load_name_a_path_that_is_not_one(tmp_path):
    model = fh.Chain.mlp([2, 3, 1])
    la = fh.Laplace(model, model.init(), "regression", backend="jax")
    with pytest.raises(InputError, match="path must be a file name .*; got NoneType"):
        la.save(None)
    with pytest.raises(InputError, match="path must be a file name .*; got NoneType"):
        fh.Laplace.load(None)
    with pytest.raises(InputError, match="cannot be written: IsADirectoryError"):
        la.save(tmp_path)


# -- loading runs no code --------------------------------------------------------------

MALICIOUS = 'run(`touch /tmp/fluxhess-owned`); Chain(Dense(2 => 3, tanh), Dense(3 => 1))'


def _rewrite(path, new_path, meta_change=None, arrays_change=None):
    """A copy of a saved file with its meta (a dict) and arrays changed."""
    import json

    with np.load(path) as f:
        data = dict(f)
    meta = json.loads(str(data.pop("meta")))
    if meta_change:
        meta_change(meta)
    if arrays_change:
        arrays_change(data)
    np.savez(new_path, meta=np.array(json.dumps(meta)), **data)
    return new_path


def _fitted_file(tmp_path, structure="full", likelihood="regression"):
    rng = np.random.default_rng(0)
    model = fh.Chain.mlp([2, 3, 1], "tanh")
    y = rng.normal(size=6) if likelihood == "regression" else (rng.normal(size=6) > 0).astype(int)
    la = fh.Laplace(model, model.init(1), likelihood, structure=structure, backend="jax").fit(rng.normal(size=(6, 2)), y)
    la.save(tmp_path / "la.npz")
    return la, tmp_path / "la.npz"


def test_load_refuses_a_flux_source_before_anything_runs(tmp_path, monkeypatch):
    """A saved Flux model's source is code: load refuses it before a model is built or a backend reached."""
    from fluxhess.laplace import core, store

    la, path = _fitted_file(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.npz", lambda m: m.update(model={"flux": dict(source=MALICIOUS, seed=0, filename="m.jl", layers=None)}))
    built, reached = [], []

    class Recorder:
        def __init__(self, *args, **kwargs):
            built.append(args)
            raise RuntimeError("a Flux model was built from the file's source")

    monkeypatch.setattr(store, "FluxModel", Recorder)
    monkeypatch.setattr(core, "_get_backend", lambda *a: reached.append(a))
    with pytest.raises(InputError, match=r"holds its Flux model as Julia source code.*run that code.*model=.*trust_source=True.*touch"):
        fh.Laplace.load(bad)
    assert built == [] and reached == []
    # the two ways to say yes: a model of your own (nothing from the file runs), or trusting the file
    back = fh.Laplace.load(bad, model=la.model)
    assert built == [] and back.model is la.model
    np.testing.assert_array_equal(back.posterior_precision, la.posterior_precision)
    with pytest.raises(RuntimeError, match="built from the file's source"):
        fh.Laplace.load(bad, trust_source=True)
    assert built == [(MALICIOUS, 0, "m.jl")]
    with pytest.raises(InputError, match="trust_source must be True or False; got 'yes'"):
        fh.Laplace.load(bad, trust_source="yes")
    with pytest.raises(InputError, match="model must be a fluxhess.Chain or a FluxModel; got str"):
        fh.Laplace.load(bad, model=MALICIOUS)
    # for a saved Chain, model= must be that Chain
    assert fh.Laplace.load(path, model=fh.Chain.mlp([2, 3, 1], "tanh")).model == la.model
    with pytest.raises(InputError, match=r"model= is Chain\(Dense\(2, 3, 'relu'\).*but the file holds Chain\(Dense\(2, 3, 'tanh'\)"):
        fh.Laplace.load(path, model=fh.Chain.mlp([2, 3, 1], "relu"))


# -- saves never lose data -------------------------------------------------------------


class Interrupted(BaseException):
    """Stands for a Ctrl-C (KeyboardInterrupt) in the middle of a write."""


@pytest.mark.parametrize("failure, raised", [(OSError(28, "No space left on device"), InputError), (Interrupted(), Interrupted)],
                         ids=["disk-full", "interrupted"])
def test_a_failed_save_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch, failure, raised):
    la, path = _fitted_file(tmp_path)
    before = path.read_bytes()
    real_savez = np.savez

    def half_then_fail(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)  # half of the archive is on disk when the failure comes
        raise failure

    monkeypatch.setattr(np, "savez", half_then_fail)
    la2 = fh.Laplace(la.model, la.params + 1.0, "regression", backend="jax")
    with pytest.raises(raised):
        la2.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["la.npz"]  # no temporary file left behind
    monkeypatch.undo()
    la2.save(path)  # and a save that succeeds replaces it
    assert np.array_equal(fh.Laplace.load(path).params, la2.params)


def test_save_through_a_symbolic_link_replaces_the_file_it_points_at(tmp_path):
    la, path = _fitted_file(tmp_path)
    (tmp_path / "link.npz").symlink_to(path)
    la2 = fh.Laplace(la.model, la.params + 1.0, "regression", backend="jax")
    la2.save(tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink()
    np.testing.assert_array_equal(fh.Laplace.load(path).params, la2.params)


# -- malformed files: a fluxhess error naming the file ---------------------------------------


def _huge_header(tmp_path, path):
    """The saved file with its 'params' entry replaced by a header claiming 10¹² float64s."""
    import io
    import zipfile

    out = tmp_path / "huge.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "params.npy":
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
                data = buf.getvalue() + b"\0" * 64
            dst.writestr(info.filename, data)
    return out


MALFORMED = {
    "truncated": (lambda p, src: (p / "t.npz").write_bytes(src.read_bytes()[: src.stat().st_size // 2]) and p / "t.npz",
                  "BadZipFile|not a NumPy"),
    "loss-a-string": (lambda p, src: _rewrite(src, p / "w.npz", lambda m: m.update(loss="0.3")), "loss must be a finite number; got '0.3'"),
    "n_data-a-list": (lambda p, src: _rewrite(src, p / "w.npz", lambda m: m.update(n_data=[6])), "n_data must be a positive integer"),
    "sigma-a-string": (lambda p, src: _rewrite(src, p / "w.npz", lambda m: m.update(sigma_noise="1")), "sigma_noise must be a positive finite number"),
    "layers-garbage": (lambda p, src: _rewrite(src, p / "w.npz", lambda m: m.update(model=[{"type": "Dense", "in_features": "2"}])),
                       "InputError|KeyError|missing"),
    "H-not-symmetric": (lambda p, src: _rewrite(src, p / "w.npz", arrays_change=lambda a: a.update(H=np.triu(a["H"] + 1.0))),
                        "H is not symmetric"),
    "H-nan": (lambda p, src: _rewrite(src, p / "w.npz", arrays_change=lambda a: a.update(H=np.full_like(a["H"], np.nan))),
              "H has non-finite entries"),
    "H-strings": (lambda p, src: _rewrite(src, p / "w.npz", arrays_change=lambda a: a.update(H=a["H"].astype(str))),
                  "H holds <U.* values"),
    "H-wrong-shape": (lambda p, src: _rewrite(src, p / "w.npz", arrays_change=lambda a: a.update(H=np.eye(3))),
                      r"H has shape \(3, 3\); this approximation needs \(13, 13\)"),
    "deep-json": (lambda p, src: np.savez(p / "d.npz", meta=np.array("[" * 200_000 + "]" * 200_000)) or p / "d.npz",
                  "nested too deeply"),
    "huge-header": (lambda p, src: _huge_header(p, src), r"claims shape \(1000000000000,\)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_an_input_error_naming_it(tmp_path, case):
    _, path = _fitted_file(tmp_path)
    write, why = MALFORMED[case]
    bad = write(tmp_path, path)
    with pytest.raises(InputError, match=rf"path '{bad}' is not a saved fluxhess Laplace approximation \(.*({why})"):
        fh.Laplace.load(bad)


@pytest.mark.parametrize("structure", ["kron", "lowrank"])
def test_garbage_factors_of_kron_and_lowrank_are_refused(tmp_path, structure):
    _, path = _fitted_file(tmp_path, structure, "classification")
    if structure == "kron":
        change, why = (lambda a: a.update(kron0_Q_A=a["kron0_Q_A"] * 3.0)), "kron0_Q_A is not orthogonal"
    else:
        change, why = (lambda a: a.update(U=a["U"][:-1])), "U has 5 rows; ggn of 6 samples × 1 outputs has 6"
    bad = _rewrite(path, tmp_path / "bad.npz", arrays_change=change)
    with pytest.raises(InputError, match=f"not a saved fluxhess Laplace approximation .*{why}"):
        fh.Laplace.load(bad)


def test_fuzzed_files_load_correctly_or_raise_an_input_error(tmp_path):
    """Truncated at many offsets, or one byte flipped at many places: every outcome is the original
    approximation or an InputError (never a raw zipfile/JSON/NumPy error, never different numbers)."""
    la, path = _fitted_file(tmp_path, "kron", "classification")
    good = path.read_bytes()
    rng = np.random.default_rng(7)
    variants = [good[:n] for n in np.linspace(0, len(good) - 1, 40).astype(int)]
    for at in rng.choice(len(good), size=80, replace=False):
        flipped = bytearray(good)
        flipped[at] ^= 1 << int(rng.integers(8))
        variants.append(bytes(flipped))
    loaded = 0
    for i, data in enumerate(variants):
        bad = tmp_path / f"v{i}.npz"
        bad.write_bytes(data)
        try:
            back = fh.Laplace.load(bad)
        except InputError as e:
            assert str(bad) in str(e)
            continue
        loaded += 1
        np.testing.assert_array_equal(back.params, la.params)
        np.testing.assert_array_equal(back.posterior_precision, la.posterior_precision)
        assert (back.loss, back.n_data, back.subset, back.sigma_noise) == (la.loss, la.n_data, la.subset, la.sigma_noise)
    assert loaded < len(variants)
