"""Saving a Laplace approximation to one ``.npz`` file and loading it back.

**What the file holds.** A NumPy ``.npz`` archive (a zip of ``.npy`` arrays, uncompressed):

- ``meta``: one JSON string — the format tag ``fluxhess.Laplace/1``; the model, as the
  table of its layers (``Dense``/``Activation``/``Flatten`` with their sizes) for a
  :class:`fluxhess.Chain`, or as its *Julia source code* (with seed, file name and layer
  range) for a :class:`fluxhess.FluxModel`; the settings (likelihood, curvature,
  structure, subset, σ, T, backend); and the fitted state's numbers (summed loss, N, C,
  what clipping removed).
- arrays: ``params`` θ ``(P,)``, ``prior_precision``, ``prior_mean``, and the fitted
  curvature — ``H`` ``(P_s, P_s)`` (full), ``h`` ``(P_s,)`` (diag), ``U`` ``(R, P_s)``
  (lowrank) or per block ``kron{i}_lam_A``, ``_Q_A``, ``_lam_G``, ``_Q_G`` (kron).

**What loading does.** It reads the JSON and the arrays, and nothing else: no pickle
(object arrays are refused), and **no code** by default. A Chain is rebuilt from its layer
table. A FluxModel's source is Julia code, and rebuilding the model from it would run that
code (any code: a file from someone else can do anything Julia can), so :func:`load`
refuses such a file unless the caller either passes the model (``model=``, built from a
source they trust) or says they trust the file (``trust_source=True``). Before an array
is allocated its header's shape is checked against the bytes the file actually holds,
and every entry is checked for type, shape and finiteness: a truncated, altered or
foreign file is an :class:`~fluxhess.InputError` naming the file and what is wrong.

**How saving writes.** Into a temporary file in the target's folder, flushed to disk
(``fsync``), then renamed over the target (``os.replace``, atomic on POSIX and Windows):
a save that fails or is interrupted leaves the previous file as it was, and never a
partial file at the target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import _memory as memory
from ..errors import FluxHessError, InputError
from ..flux import FluxModel
from ..layers import Parallel, SkipConnection
from ..model import LAYERS, Chain
from . import posterior

FORMAT = "fluxhess.Laplace/1"
#: The curvature arrays of each structure (kron's are per block, ``kron{i}_<part>``).
_KRON_PARTS = ("lam_A", "Q_A", "lam_G", "Q_G")
#: How much of a refused Flux source the error message shows.
_SOURCE_PREVIEW = 300


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


def _layer(d) -> object:
    """The layer :func:`_layer_dict` wrote; anything else is an InputError naming what is wrong."""
    if not isinstance(d, dict) or d.get("type") not in _CLASSES:
        raise InputError(f"meta.model must be a list of layers of types {', '.join(_CLASSES)}; got {str(d)[:60]}")
    fields = dict(d)
    cls = _CLASSES[fields.pop("type")]
    try:
        if cls is SkipConnection:
            return cls(*[_layer(x) for x in fields["layers"]])
        if cls is Parallel:
            return cls(*[[_layer(x) for x in branch] for branch in fields["branches"]])
        return cls(**fields)
    except (TypeError, KeyError, ValueError) as e:
        raise InputError(f"meta.model has a {cls.__name__} layer that cannot be built: {e}") from None


def _chain(layers: list, inputs, input_shape=None) -> Chain:
    if not isinstance(layers, list):
        raise InputError(f"meta.model must be a list of layers of types {', '.join(_CLASSES)}")
    return Chain(*[_layer(d) for d in layers], inputs=None if inputs is None else dict(inputs),
                 input_shape=None if input_shape is None else tuple(input_shape))


def _model(saved, inputs, input_shape, model):
    """The model to restore: ``model`` when given (a Chain must equal the saved one), else the
    saved one (:func:`load` has refused a Flux source already unless the caller trusts it)."""
    flux = _flux_source(saved)
    if model is not None:
        if flux is None and isinstance(model, Chain) and model != _chain(saved, inputs, input_shape):
            raise InputError(f"model= is {model!r}, but the file holds {_chain(saved, inputs, input_shape)!r}")
        return model
    if flux is None:
        return _chain(saved, inputs, input_shape)
    return FluxModel(flux["source"], flux.get("seed", 0), flux.get("filename", "model source"), layers=flux.get("layers"))


def _flux_source(saved) -> dict | None:
    """The saved Flux model (``source``, ``seed``, ...) when the file holds one, else None."""
    if not isinstance(saved, dict):
        return None
    flux = saved.get("flux")
    if not isinstance(flux, dict) or not isinstance(flux.get("source"), str):
        raise TypeError("meta.model is neither a layer list nor a Flux model's source")
    return flux


def _refuse_source(path, source: str) -> InputError:
    preview = source if len(source) <= _SOURCE_PREVIEW else source[:_SOURCE_PREVIEW] + " …"
    return InputError(
        f"{str(path)!r} holds its Flux model as Julia source code, and rebuilding the model from it would run "
        f"that code, whatever it does. Pass the model yourself, Laplace.load(path, model=fluxhess.flux_model(source)) "
        f"with a source you trust, or Laplace.load(path, trust_source=True) if you trust this file. "
        f"Its source begins: {preview!r}"
    )


# -- saving -------------------------------------------------------------------------


def save(la, path) -> None:
    """Write ``la`` (fitted or not) to ``path`` (``.npz``), atomically (see the module)."""
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
    arrays.update(_curvature_arrays(la.fitted_curvature))
    target = _path(path)
    try:
        _write_atomically(target, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.asarray(v) for k, v in arrays.items()}))
    except OSError as e:
        raise InputError(f"path {str(path)!r} cannot be written: {type(e).__name__}: {e}") from None


def _curvature_arrays(curv) -> dict:
    if isinstance(curv, posterior.Full):
        return {"H": curv.H}
    if isinstance(curv, posterior.Diag):
        return {"h": curv.h}
    if isinstance(curv, posterior.LowRank):
        return {"U": curv.U}
    if isinstance(curv, posterior.Kron):
        return {f"kron{i}_{part}": getattr(b, part) for i, b in enumerate(curv.blocks) for part in _KRON_PARTS}
    return {}


def _write_atomically(target: Path, write) -> None:
    """``write(file)`` into a new file beside ``target``, synced to disk, then renamed over it.

    On any failure (an exception, KeyboardInterrupt included) the temporary file is removed
    and ``target`` is untouched. A symbolic link at ``target`` keeps pointing at the file.
    """
    target = Path(os.path.realpath(target))
    folder = target.parent
    temporary = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every filesystem lets a folder be synced
        folder_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_fd)
    except OSError:
        pass
    finally:
        os.close(folder_fd)


def _path(path) -> Path:
    """``path`` (a ``str`` or ``os.PathLike``) as a Path; anything else is an InputError."""
    try:
        return Path(path)
    except TypeError:
        raise InputError(f"path must be a file name (str or pathlib.Path); got {type(path).__name__}") from None


# -- loading ------------------------------------------------------------------------

#: What a damaged or foreign file can raise while it is parsed; each becomes an InputError naming the file.
_PARSE_ERRORS = (
    OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, np.linalg.LinAlgError,
)


def load(cls, path, *, model=None, trust_source: bool = False):
    """The Laplace approximation saved at ``path``, fitted state included (see the module).

    ``model``: the model to use instead of the saved one (same number of parameters); the
    way to load a file that holds a Flux model's source without running it. ``trust_source``:
    rebuild a saved Flux model by running its source in Julia — only for files you trust.

    A file that is not one :func:`save` wrote (another ``.npy``/``.npz``, text, truncated or
    altered bytes, an entry missing or malformed) raises :class:`~fluxhess.InputError` saying so.
    """
    if not isinstance(trust_source, bool):
        raise InputError(f"trust_source must be True or False; got {trust_source!r}")
    if model is not None and not isinstance(model, (Chain, FluxModel)):
        raise InputError(f"model must be a fluxhess.Chain or a FluxModel; got {type(model).__name__}")
    meta, arrays = _read(path)
    try:
        flux = _flux_source(meta.get("model"))
    except TypeError as e:
        raise _not_saved(path, str(e)) from None
    if flux is not None and model is None and not trust_source:  # before anything is built: nothing runs
        raise _refuse_source(path, flux["source"])
    try:
        return _restore(cls, _model(meta["model"], meta.get("inputs"), meta.get("input_shape"), model), meta, arrays)
    except KeyError as e:
        raise _not_saved(path, f"its entry {e} is missing") from None
    except InputError as e:
        raise _not_saved(path, f"{type(e).__name__}: {e}") from None
    except FluxHessError:
        raise
    except _PARSE_ERRORS as e:
        raise _not_saved(path, f"{type(e).__name__}: {e}") from None


def _not_saved(path, why: str) -> InputError:
    return InputError(f"path {str(path)!r} is not a saved fluxhess Laplace approximation ({why})")


def _read(path) -> tuple[dict, dict]:
    """``(meta, arrays)`` of a file :func:`save` wrote; an InputError for anything else."""
    file = _path(path)
    try:
        size = file.stat().st_size
        if not zipfile.is_zipfile(file):
            raise _not_saved(path, _what_it_is(file))
        with zipfile.ZipFile(file) as archive:
            members = {m.filename: m for m in archive.infolist()}
            headers = {name: _header(archive, m, size) for name, m in members.items()}
            biggest = max(headers.values(), key=lambda h: h[2], default=((), None, 0))
            memory.require(f"Laplace.load of {str(path)!r}", sum(h[2] for h in headers.values()), biggest[0])
            if "meta.npy" not in members:
                raise _not_saved(path, "no 'meta' entry")
            meta = _meta(path, _array(archive, members["meta.npy"], headers["meta.npy"]))
            arrays = {name[: -len(".npy")]: _array(archive, m, headers[name]) for name, m in members.items() if name != "meta.npy"}
    except FluxHessError:
        raise
    except RecursionError:
        raise _not_saved(path, "its meta entry is nested too deeply to be the JSON save writes") from None
    except _PARSE_ERRORS as e:
        raise _not_saved(path, f"{type(e).__name__}: {e}") from None
    return meta, arrays


def _what_it_is(file: Path) -> str:
    """Why a file that is not a zip archive is not a saved approximation (reads only a header)."""
    with open(file, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            return "it is not a NumPy .npz archive"
        shape, _, _ = _read_header(f, version)
    return f"it holds a single array of shape {shape}, not an .npz archive"


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"an .npy entry of format version {version}, which save does not write")


def _header(archive: zipfile.ZipFile, member: zipfile.ZipInfo, file_size: int) -> tuple[tuple, np.dtype, int]:
    """An entry's shape, dtype and byte count, checked against the bytes the archive holds
    for it, before anything of that size is allocated."""
    if not member.filename.endswith(".npy"):
        raise ValueError(f"entry {member.filename!r} is not an .npy array")
    if member.compress_type == zipfile.ZIP_STORED and member.file_size > file_size:
        raise ValueError(f"entry {member.filename!r} claims {member.file_size} bytes, more than the whole file ({file_size})")
    with archive.open(member) as f:
        shape, _, dtype = _read_header(f, np.lib.format.read_magic(f))
        header_bytes = f.tell()
    if dtype.hasobject:
        raise ValueError(f"entry {member.filename!r} holds Python objects (pickled), which save never writes")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != member.file_size - header_bytes:
        raise ValueError(
            f"entry {member.filename!r} claims shape {shape} of {dtype} ({nbytes} bytes), but holds "
            f"{member.file_size - header_bytes} bytes"
        )
    return shape, dtype, nbytes


def _array(archive: zipfile.ZipFile, member: zipfile.ZipInfo, header) -> np.ndarray:
    with archive.open(member) as f:  # reading to its end checks the entry's CRC
        a = np.lib.format.read_array(f, allow_pickle=False)
        if f.read(1):
            raise ValueError(f"entry {member.filename!r} has bytes after its array")
    if a.shape != header[0]:
        raise ValueError(f"entry {member.filename!r} changed shape while it was read")
    return a


def _meta(path, entry: np.ndarray) -> dict:
    if entry.shape != () or entry.dtype.kind != "U":
        raise _not_saved(path, "its 'meta' entry is not a JSON string")
    try:
        meta = json.loads(str(entry[()]))
    except ValueError:
        raise _not_saved(path, "its 'meta' entry is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{path} holds format {found!r}; this fluxhess reads {FORMAT!r}")
    return meta


# -- the restored approximation, checked --------------------------------------------------


def _restore(cls, model, meta: dict, arrays: dict):
    for name in ("params", "prior_precision", "prior_mean"):
        _real(name, arrays[name])
    la = cls(
        model,
        arrays["params"],
        meta["likelihood"],
        curvature=meta["curvature"],
        structure=meta["structure"],
        subset=meta["subset"],
        prior_precision=arrays["prior_precision"],
        prior_mean=arrays["prior_mean"],
        sigma_noise=_number("sigma_noise", meta["sigma_noise"]),
        temperature=_number("temperature", meta["temperature"]),
        backend=meta["backend"],
        clip_negative_eigenvalues=meta["clip_negative_eigenvalues"],
    )
    curv = _curvature(la, arrays)
    if curv is None:
        extra = sorted(set(arrays) - {"params", "prior_precision", "prior_mean"})
        if extra:
            raise ValueError(f"entries {extra} that an unfitted approximation does not have")
        return la
    n_data, n_outputs = _count("n_data", meta["n_data"]), _count("n_outputs", meta["n_outputs"])
    if isinstance(curv, posterior.LowRank):
        rows = n_data * (n_outputs if la.curvature == "ggn" else 1)
        if curv.U.shape[0] != rows:
            raise ValueError(f"U has {curv.U.shape[0]} rows; {la.curvature} of {n_data} samples × {n_outputs} outputs has {rows}")
    return la.restore(curv, loss=_number("loss", meta["loss"], positive=False), n_data=n_data, n_outputs=n_outputs,
                      clipped=_clipped(meta["clipped"]))


def _curvature(la, arrays: dict):
    """The fitted curvature in ``arrays`` (None when unfitted), every entry of the right shape and finite."""
    P = la.n_params
    present = {"full": "H" in arrays, "diag": "h" in arrays, "lowrank": "U" in arrays, "kron": "kron0_lam_A" in arrays}
    if sum(present.values()) > 1 or (any(present.values()) and not present[la.structure]):
        raise ValueError(f"curvature entries {sorted(k for k, v in present.items() if v)} for structure {la.structure!r}")
    if not any(present.values()):
        return None
    if la.structure == "full":
        H = _real("H", arrays["H"], (P, P))
        if not np.allclose(H, H.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.max(np.abs(H), initial=0.0)))):
            raise ValueError("H is not symmetric")
        return posterior.Full(H)
    if la.structure == "diag":
        return posterior.Diag(_real("h", arrays["h"], (P,)))
    if la.structure == "lowrank":
        U = arrays["U"]
        return posterior.LowRank(_real("U", U, (U.shape[0] if U.ndim == 2 else -1, P)))
    blocks = []
    for i, block in enumerate(la._subset.blocks):
        n_in, n_out = (block.shape[1], block.shape[0]) if len(block.shape) == 2 else (1, block.shape[0])
        parts = {part: arrays[f"kron{i}_{part}"] for part in _KRON_PARTS}
        lam_A, lam_G = _real(f"kron{i}_lam_A", parts["lam_A"], (n_in,)), _real(f"kron{i}_lam_G", parts["lam_G"], (n_out,))
        Q_A, Q_G = _real(f"kron{i}_Q_A", parts["Q_A"], (n_in, n_in)), _real(f"kron{i}_Q_G", parts["Q_G"], (n_out, n_out))
        for name, Q in ((f"kron{i}_Q_A", Q_A), (f"kron{i}_Q_G", Q_G)):
            if not np.allclose(Q.T @ Q, np.eye(Q.shape[0]), atol=1e-8):
                raise ValueError(f"{name} is not orthogonal (an eigenvector matrix)")
        blocks.append(posterior.KronBlock(lam_A, Q_A, lam_G, Q_G))
    extra = [k for k in arrays if k.startswith("kron") and not k.startswith(tuple(f"kron{i}_" for i in range(len(blocks))))]
    if extra:
        raise ValueError(f"entries {sorted(extra)} beyond the subset's {len(blocks)} blocks")
    return posterior.Kron(tuple(blocks))


def _real(name: str, a: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    """``a`` as float64, refused unless real, finite and (when given) of ``shape``."""
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"{name} holds {a.dtype} values; save writes real numbers")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}; this approximation needs {shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


def _number(name: str, value, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise TypeError(f"{name} must be a {'positive ' if positive else ''}finite number; got {value!r}")
    return float(value)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    return value


def _clipped(value):
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value[:2])
            or not 0 <= value[0] <= value[1]):
        raise TypeError(f"clipped must be null or [count, total, most_negative]; got {value!r}")
    return value[0], value[1], _number("clipped most_negative", value[2], positive=False)
