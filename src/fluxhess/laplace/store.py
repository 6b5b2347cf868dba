"""Saving a Laplace approximation to one ``.npz`` file and loading it back.

The file holds the model spec and settings as JSON (key ``meta``) and every array —
θ, the prior, the fitted curvature — under its own key; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..flux import FluxModel
from ..layers import Parallel, SkipConnection
from ..model import LAYERS, Chain
from . import posterior

FORMAT = "fluxhess.Laplace/1"


def _layers(model) -> list[dict] | dict:
    if isinstance(model, FluxModel):  # its source: the weights that matter are θ, saved below
        return {"flux": dict(source=model.source, seed=model.seed, filename=model.filename, layers=model.layers)}
    return [_layer_dict(layer) for layer in model.layers]


def _plain(value):
    """Tuples as JSON lists, all the way down."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _layer_dict(layer) -> dict:
    """A layer as ``{"type": class name, field: value, ...}`` (its constructor's arguments)."""
    if isinstance(layer, SkipConnection):
        return dict(type="SkipConnection", layers=[_layer_dict(l) for l in layer.layers])
    if isinstance(layer, Parallel):
        return dict(type="Parallel", branches=[[_layer_dict(l) for l in b] for b in layer.branches])
    return dict(type=type(layer).__name__, **{f.name: _plain(getattr(layer, f.name)) for f in dataclasses.fields(layer)})


#: Every layer class by name, as :func:`_layer_dict` writes it.
_CLASSES = {cls.__name__: cls for cls in LAYERS}


def _layer(d: dict):
    fields = dict(d)
    cls = _CLASSES[fields.pop("type")]
    if cls is SkipConnection:
        return cls(*[_layer(x) for x in fields["layers"]])
    if cls is Parallel:
        return cls(*[[_layer(x) for x in branch] for branch in fields["branches"]])
    return cls(**fields)


def _chain(layers: list[dict] | dict, inputs=None, input_shape=None):
    if isinstance(layers, dict):
        return FluxModel(**layers["flux"])
    return Chain(*[_layer(d) for d in layers], inputs=None if inputs is None else dict(inputs), input_shape=input_shape)


def save(la, path) -> None:
    """Write ``la`` (fitted or not) to ``path`` (``.npz``)."""
    meta = dict(
        format=FORMAT,
        model=_layers(la.model),
        inputs=getattr(la.model, "inputs", None),
        input_shape=_plain(getattr(la.model, "input_shape", None)),
        likelihood=la.likelihood,
        curvature=la.curvature,
        structure=la.structure,
        subset=la.subset,
        sigma_noise=la.sigma_noise,
        temperature=la.temperature,
        backend=la.backend,
        clip_negative_eigenvalues=la.clip_negative_eigenvalues,
        clipped=None if la.clipped is None else list(la.clipped),
        loss=la.loss,
        n_data=la.n_data,
        n_outputs=la.n_outputs,
    )
    arrays = dict(params=la.params, prior_precision=la.prior_precision, prior_mean=la.prior_mean)
    curv = la.fitted_curvature
    if isinstance(curv, posterior.Full):
        arrays["H"] = curv.H
    elif isinstance(curv, posterior.Diag):
        arrays["h"] = curv.h
    elif isinstance(curv, posterior.LowRank):
        arrays["U"] = curv.U
    elif isinstance(curv, posterior.Kron):
        for i, b in enumerate(curv.blocks):
            arrays.update({f"kron{i}_lam_A": b.lam_A, f"kron{i}_Q_A": b.Q_A, f"kron{i}_lam_G": b.lam_G, f"kron{i}_Q_G": b.Q_G})
    try:
        with open(_path(path), "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.asarray(v) for k, v in arrays.items()})
    except OSError as e:
        raise InputError(f"path {str(path)!r} cannot be written: {type(e).__name__}: {e}") from None


def _path(path) -> Path:
    """``path`` (a ``str`` or ``os.PathLike``) as a Path; anything else is an InputError."""
    try:
        return Path(path)
    except TypeError:
        raise InputError(f"path must be a file name (str or pathlib.Path); got {type(path).__name__}") from None


def load(cls, path):
    """The Laplace approximation saved at ``path``, fitted state included.

    A file that is not one :func:`save` wrote (another ``.npy``/``.npz``, text, an entry
    missing or malformed) raises :class:`~fluxhess.InputError` saying so.
    """
    meta, arrays = _read(path)
    try:
        return _restore(cls, meta, arrays)
    except KeyError as e:
        raise _not_saved(path, f"its entry {e} is missing") from None
    except (TypeError, ValueError, IndexError) as e:  # InputError included: an entry that is malformed
        raise _not_saved(path, f"{type(e).__name__}: {e}") from None


def _not_saved(path, why: str) -> InputError:
    return InputError(f"path {str(path)!r} is not a saved fluxhess Laplace approximation ({why})")


def _read(path) -> tuple[dict, dict]:
    """``(meta, arrays)`` of a file :func:`save` wrote; an InputError for anything else."""
    file = _path(path)
    try:
        data = np.load(file, allow_pickle=False)
    except OSError as e:
        raise _not_saved(path, f"{type(e).__name__}: {e}") from None
    except (ValueError, EOFError):
        raise _not_saved(path, "it is not a NumPy .npz archive") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _not_saved(path, f"it holds a single array of shape {np.shape(data)}, not an .npz archive")
    with data:
        try:
            meta = json.loads(str(data["meta"]))
        except (KeyError, ValueError):
            raise _not_saved(path, "no readable 'meta' entry") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{path} holds format {found!r}; this fluxhess reads {FORMAT!r}")
        try:
            arrays = {k: data[k] for k in data.files if k != "meta"}
        except ValueError as e:  # an entry holding pickled objects
            raise _not_saved(path, str(e)) from None
    return meta, arrays


def _restore(cls, meta: dict, arrays: dict):
    la = cls(
        _chain(meta["model"], meta.get("inputs"), meta.get("input_shape")),
        arrays["params"],
        meta["likelihood"],
        curvature=meta["curvature"],
        structure=meta["structure"],
        subset=meta["subset"],
        prior_precision=arrays["prior_precision"],
        prior_mean=arrays["prior_mean"],
        sigma_noise=meta["sigma_noise"],
        temperature=meta["temperature"],
        backend=meta["backend"],
        clip_negative_eigenvalues=meta["clip_negative_eigenvalues"],
    )
    curv = None
    if "H" in arrays:
        curv = posterior.Full(arrays["H"])
    elif "h" in arrays:
        curv = posterior.Diag(arrays["h"])
    elif "U" in arrays:
        curv = posterior.LowRank(arrays["U"])
    elif "kron0_lam_A" in arrays:
        n = sum(1 for k in arrays if k.endswith("_lam_A"))
        curv = posterior.Kron(tuple(
            posterior.KronBlock(*(arrays[f"kron{i}_{part}"] for part in ("lam_A", "Q_A", "lam_G", "Q_G"))) for i in range(n)
        ))
    if curv is not None:
        la.restore(curv, loss=meta["loss"], n_data=meta["n_data"], n_outputs=meta["n_outputs"], clipped=meta["clipped"])
    return la
