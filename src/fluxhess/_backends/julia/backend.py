"""The julia backend: every quantity computed by Flux + Zygote (+ ForwardDiff) in Julia.

The bundled Julia package ``FluxHess`` (``julia/``, a standard Julia package whose
module is ``src/FluxHess.jl``) does the work; this file only finds a Julia runtime, starts it lazily
and once, loads the package with ``using FluxHess`` (precompiled, with a
workload of every quantity), hands arrays over and copies results back.

- ``import fluxhess`` never imports juliacall. Detecting a runtime
  (:meth:`JuliaBackend.unavailable_reason`) never downloads or starts anything.
- juliapkg installs FluxHess as a dev package from this wheel or checkout
  (``juliapkg.json``: ``"path": "julia"``, ``"dev": true``). Where the active
  Julia project does not have it (``PYTHON_JULIACALL_PROJECT`` set by the user),
  the bundled package folder is put on ``LOAD_PATH``; its dependencies (Flux,
  Zygote, ForwardDiff, PrecompileTools) must then be in that project.
- Julia starts on the first real call, with juliapkg in offline mode unless
  :func:`setup_julia` ran in this process or the user set
  ``PYTHON_JULIAPKG_OFFLINE`` themselves, so a call never turns into a download.
  A start that fails raises :class:`JuliaUnavailableError` with Julia's message,
  and every later call raises the same error at once.
- Arrays reach Julia as no-copy NumPy views in NumPy index order; FluxHess.jl
  copies them into plain Julia arrays and returns plain arrays in NumPy index
  order, which are copied into C-ordered NumPy arrays here.
- The work in Julia is BLAS: its threads are set to every core on start (Julia's own
  default is half), unless ``OPENBLAS_NUM_THREADS`` says otherwise.
- Python calls ``FluxHess.Bridge``, the layer of FluxHess.jl that takes NumPy's
  conventions (``X`` ``(N, d)``, the loss and ``agg`` by name) and calls the Julia API
  (features × batch, Flux loss functions, keyword arguments).
- The curvature kind reaches Julia as a type (``FluxHess.Hessian()``, ``GGN()``,
  ``EmpiricalFisher()``); Julia dispatches on it.
- ``out=`` of the P×P quantities: Julia writes into the caller's array itself, panel by
  panel, within :data:`WORK_BYTES` of working memory (:meth:`JuliaBackend.matrix_bytes`);
  ``hvp`` runs in chunks of columns of ``V``, each within :data:`fluxhess._memory.CHUNK_BYTES`.
- One lock serialises every call into Julia. A Julia exception becomes a fluxhess error
  in one place (:func:`julia_error`): :class:`InputError` for Julia's ``ArgumentError`` and
  ``DimensionMismatch`` (what the arguments were refused for), :class:`BackendError`
  otherwise, each carrying Julia's message, the quantity and the shapes; the process
  stays usable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ...errors import BackendError, FluxHessError, InputError, JuliaUnavailableError, UnsupportedModelError
from ...jax_function import JaxFunction
from ...model import Activation, Chain, Flatten
from ... import _memory as memory
from .spec_layers import spec_layers
from ..._problem import Problem
from . import sysimage

#: The Julia packages the julia backend needs: FluxHess and what it loads (julia/Project.toml).
PACKAGES = ("FluxHess", "Flux", "Zygote", "ForwardDiff", "NNlib", "PrecompileTools", "Compat", "Statistics")

#: The Julia type of each curvature kind.
_KINDS = {"hessian": "Hessian", "ggn": "GGN", "ef": "EmpiricalFisher"}

#: Working memory (bytes) a P×P route of FluxHess.jl may use beside its result: its chunks
#: of samples and panels of rows (``FluxHess.curvature!``'s ``workspace``).
WORK_BYTES = memory.CHUNK_BYTES

#: The NumPy dtypes passed to Julia as views of their memory, and their Julia element types.
_ELTYPES = {"float64": "Float64", "float32": "Float32"}

#: How ``FluxHess.Bridge.error_class`` names a Julia exception -> the fluxhess error raised.
_ERRORS = {"input": InputError, "backend": BackendError}

_HOW_TO_FIX = (
    "Run `fluxhess setup-julia` once (online: it installs the Julia packages, and Julia "
    "itself if none is found), or point PYTHON_JULIACALL_EXE at an existing Julia together "
    "with PYTHON_JULIACALL_PROJECT at a Julia project that has "
    + ", ".join(PACKAGES)
    + " and PythonCall installed (FluxHess: `Pkg.develop(path=...)` of the folder "
    + "fluxhess/julia of this installation)"
)


# --- locating things --------------------------------------------------------


def package_path() -> Path:
    """The bundled Julia package folder (``Project.toml``, ``src/FluxHess.jl``)."""
    candidates = []
    try:
        candidates.append(Path(str(resources.files("fluxhess") / "julia")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - fluxhess is importable here
        pass
    # source checkout: <repo>/src/fluxhess/_backends/julia/backend.py -> <repo>/julia
    candidates.append(Path(__file__).resolve().parents[4] / "julia")
    for path in candidates:
        if (path / "Project.toml").is_file() and (path / "src" / "FluxHess.jl").is_file():
            return path
    raise JuliaUnavailableError(
        "the bundled Julia package FluxHess is missing; looked at "
        + ", ".join(map(str, candidates))
        + ". Reinstall fluxhess"
    )


def module_path() -> Path:
    """The bundled ``src/FluxHess.jl``, the Julia module."""
    return package_path() / "src" / "FluxHess.jl"


def juliapkg_state() -> dict:
    """juliapkg's view of where its Julia and project live (reads env vars only)."""
    from juliapkg.state import STATE  # side-effect free: only reads the environment

    return STATE


def _manifest_has(project: str, package: str) -> bool:
    """Whether a Manifest of the Julia ``project`` records ``package`` as installed."""
    try:
        names = [n for n in os.listdir(project) if n.startswith("Manifest") and n.endswith(".toml")]
    except OSError:
        return False
    for name in names:
        try:
            text = Path(project, name).read_text(encoding="utf-8")
        except OSError:
            continue
        if f"[[deps.{package}]]" in text or f"[[{package}]]" in text:
            return True
    return False


def find_runtime() -> tuple[str | None, str]:
    """``(where Julia was found, how)`` or ``(None, why not)``, without starting or downloading.

    Follows juliacall/juliapkg's own search order (juliapkg's ``find_julia`` and ``executable``).
    """
    exe = os.environ.get("PYTHON_JULIACALL_EXE")
    if exe:
        found = shutil.which(exe)
        if found is None:
            return None, f"PYTHON_JULIACALL_EXE={exe} is not an executable"
        if not os.environ.get("PYTHON_JULIACALL_PROJECT"):
            return None, (
                "PYTHON_JULIACALL_EXE is set but PYTHON_JULIACALL_PROJECT is not; juliacall needs both"
            )
        return found, "PYTHON_JULIACALL_EXE"
    if os.environ.get("PYTHON_JULIACALL_PROJECT"):
        return None, "PYTHON_JULIACALL_PROJECT is set but PYTHON_JULIACALL_EXE is not; juliacall needs both"
    exe = os.environ.get("PYTHON_JULIAPKG_EXE")
    if exe:
        found = shutil.which(exe)
        return (found, "PYTHON_JULIAPKG_EXE") if found else (None, f"PYTHON_JULIAPKG_EXE={exe} is not an executable")
    state = juliapkg_state()
    installed = os.path.join(state["install"], "bin", "julia.exe" if os.name == "nt" else "julia")
    if os.path.isfile(installed):
        return installed, "juliapkg"
    for name in ("juliaup", "julia"):
        found = shutil.which(name)
        if found:
            return found, f"{name} on PATH"
    return None, (
        "no Julia runtime found (PYTHON_JULIACALL_EXE and PYTHON_JULIAPKG_EXE are unset, neither "
        f"`julia` nor `juliaup` is on PATH, and juliapkg has installed none under {state['install']})"
    )


# --- errors -----------------------------------------------------------------


def julia_message(exc: BaseException) -> str:
    """The text of a Julia exception without its stack trace."""
    text = str(exc)
    for marker in ("\nStacktrace:", "\nstacktrace:"):
        if marker in text:
            text = text.split(marker, 1)[0]
    return text.strip() or type(exc).__name__


def julia_error(exc: BaseException, what: str, error_class: str = "backend", otherwise=BackendError) -> FluxHessError:
    """The fluxhess error for an exception a Julia call raised: ``otherwise`` when the caller
    chose a class of its own (e.g. :class:`UnsupportedModelError` for "this model has no spec"),
    else :class:`InputError` when Julia classed it ``"input"`` (``FluxHess.Bridge.error_class``:
    an ``ArgumentError`` or ``DimensionMismatch``) and :class:`BackendError` otherwise; its
    message is ``what`` and Julia's message."""
    cls = _ERRORS.get(error_class, BackendError) if otherwise is BackendError else otherwise
    return cls(f"{what}: {julia_message(exc)}")


def _to_numpy(value) -> np.ndarray:
    """An owned, C-ordered NumPy copy of a Julia array (or of anything array-like)."""
    to_numpy = getattr(value, "to_numpy", None)  # juliacall.ArrayValue: a copy owned by NumPy
    if to_numpy is not None:
        return to_numpy(order="C")  # one copy, C-ordered, owned by NumPy
    return np.array(value, order="C", copy=True)


@runtime_checkable
class FluxSource(Protocol):
    """What the julia backend needs of a Flux model written in Julia (a :class:`fluxhess.FluxModel`):
    the source, the RNG seed it runs under, its file name, which of its flattened layers
    (``layers``, 0-based ``(start, stop)`` or None) and the NumPy shape of one input sample
    (``input_shape`` or None); ``key`` identifies all of it, and ``with_input_shape`` gives
    the same model fed another sample shape."""

    source: str
    seed: int
    filename: str
    layers: tuple[int, int] | None
    input_shape: tuple[int, ...] | None

    @property
    def key(self) -> tuple: ...

    def with_input_shape(self, shape): ...


class _Kind:
    """A curvature kind by name, turned into its Julia type inside the lock."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


#: The file name a spec Chain's Flux source is built under.
_SPEC_SOURCE = "fluxhess.Chain"


def _spec_layer(d: dict):
    """A parameter-free layer's spec twin from Julia's description (``"kind"``, ``"activation"``)."""
    return Flatten() if str(d["kind"]) == "flatten" else Activation(str(d["activation"]))


# --- starting Julia ---------------------------------------------------------

_ONLINE = False  # set by setup_julia(): later starts in this process may install packages


def _import_juliacall():
    """``import juliacall``: offline unless the user chose otherwise (``juliapkg.offline``,
    ``PYTHON_JULIAPKG_OFFLINE``), from fluxhess's system image when one is usable, quietly
    inside IPython (:func:`_start_options`)."""
    if "juliacall" not in sys.modules and not _ONLINE and "PYTHON_JULIAPKG_OFFLINE" not in os.environ:
        import juliapkg

        juliapkg.offline(True)
    options = {} if "juliacall" in sys.modules else _start_options()
    saved = {name: os.environ.get(name) for name in options}
    os.environ.update(options)
    try:
        import juliacall
    finally:  # juliacall read its options while importing: the caller's environment is left as it was
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return juliacall


def _start_options() -> dict[str, str]:
    """juliacall options (``PYTHON_JULIACALL_*``) for this start, where the user set none:

    - ``SYSIMAGE``: fluxhess's system image of the Julia project, when one is usable
      (:func:`.sysimage.usable`);
    - ``AUTOLOAD_IPYTHON_EXTENSION=yes`` inside an IPython session: juliacall then loads its
      IPython extension, which is what such a session needs (Julia's output in the cell,
      Julia's ``display`` through IPython), without printing its notice of doing so into the
      user's cell (it prints one only when the option is unset). Outside IPython: unset.
    """
    options = {}
    if "PYTHON_JULIACALL_SYSIMAGE" not in os.environ:
        project = os.environ.get("PYTHON_JULIACALL_PROJECT") or juliapkg_state()["project"]
        image = sysimage.usable(project, package_path())
        if image is not None:
            options["PYTHON_JULIACALL_SYSIMAGE"] = str(image)
    if "PYTHON_JULIACALL_AUTOLOAD_IPYTHON_EXTENSION" not in os.environ and _ipython_shell() is not None:
        options["PYTHON_JULIACALL_AUTOLOAD_IPYTHON_EXTENSION"] = "yes"
    return options


def _ipython_shell():
    """The running IPython shell, or None (IPython not imported, or imported outside a session)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython() if get_ipython is not None else None


class JuliaBackend:
    """Every quantity from FluxHess.jl (Flux + Zygote + ForwardDiff) through juliacall."""

    name = "julia"
    #: KFAC of Chains with Conv layers (FluxHess's convolutional route, julia/src/conv.jl).
    kron_convolutions = True

    def __init__(self):
        self._lock = threading.Lock()
        self._fh = None  # the FluxHess Julia module, once started
        self._kinds: dict = {}  # "hessian" / "ggn" / "ef" -> the Julia kind value
        self._jl = None  # juliacall.Main
        self._failure: str | None = None  # why Julia failed to start, once it has
        self._models: dict = {}  # (source, seed, filename, dtype) -> Julia model

    # -- availability -------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        if self._fh is not None:
            return None
        if self._failure is not None:
            return self._failure
        missing_modules = [m for m in ("juliacall", "juliapkg") if importlib.util.find_spec(m) is None]
        if missing_modules:
            names = " and ".join(missing_modules)
            verb = "are dependencies of fluxhess but are" if len(missing_modules) > 1 else "is a dependency of fluxhess but is"
            return f"the Python package {names} {verb} not installed in this environment: pip install juliacall"
        where, how = find_runtime()
        if where is None:
            return f"{how}. {_HOW_TO_FIX}"
        if how in ("PYTHON_JULIACALL_EXE",):
            return None  # the user manages the project; a missing package shows on start
        project = juliapkg_state()["project"]
        missing = [p for p in PACKAGES if not _manifest_has(project, p)]
        if missing:
            return (
                f"Julia was found ({where}, via {how}) but the Julia packages {', '.join(missing)} "
                f"are not installed in juliapkg's project {project}. {_HOW_TO_FIX}"
            )
        return None

    def unsupported_reason(self, model) -> str | None:
        if isinstance(model, (Chain, FluxSource)):
            return None
        if isinstance(model, JaxFunction):
            return (
                f"{model!r} is a JAX function (model_kind 'jax_function'), which has no Julia twin: fluxhess "
                "cannot write an arbitrary JAX function as a Flux model. It runs on backend='jax'; a network "
                "made only of fluxhess.Chain layers converts to a Chain, which runs on both"
            )
        return (
            f"the julia backend runs fluxhess.Chain specs and FluxModels; got {type(model).__name__}. "
            "Build one with fluxhess.Chain(...) or fluxhess.flux_model(source)"
        )

    def _start(self):
        """The FluxHess module, starting Julia on first use. Call with the lock held."""
        if self._fh is not None:
            return self._fh
        reason = self.unavailable_reason()
        if reason is not None:
            raise JuliaUnavailableError(f"backend 'julia' is unavailable: {reason}")
        try:
            juliacall = _import_juliacall()
        except Exception as e:  # juliacall raises plain Exceptions when Julia cannot start
            self._failure = f"Julia was found but did not start: {julia_message(e)}. {_HOW_TO_FIX}"
            raise JuliaUnavailableError(f"backend 'julia' is unavailable: {self._failure}") from e
        path = package_path()
        try:
            jl = juliacall.Main
            if not bool(jl.seval('Base.identify_package("FluxHess") !== nothing')):
                jl.seval(f"push!(LOAD_PATH, {json.dumps(str(path))})")
            self._fh = jl.seval("(using FluxHess: FluxHess; FluxHess.Bridge)")
            self._jl = jl
            if "OPENBLAS_NUM_THREADS" not in os.environ:  # Julia's default is half the cores
                jl.seval("FluxHess.LinearAlgebra.BLAS.set_num_threads(Sys.CPU_THREADS)")
        except Exception as e:
            self._failure = f"Julia started but loading the package FluxHess ({path}) failed: {julia_message(e)}. {_HOW_TO_FIX}"
            raise JuliaUnavailableError(f"backend 'julia' is unavailable: {self._failure}") from e
        return self._fh

    def _kind(self, name: str):
        """The Julia value of the curvature kind ``name`` (``FluxHess.GGN()``, ...). Lock held."""
        kind = self._kinds.get(name)
        if kind is None:
            kind = self._kinds[name] = getattr(self._fh, _KINDS[name])()
        return kind

    def julia(self):
        """``FluxHess.Bridge``, the Julia module this backend calls (starting Julia if needed), for
        direct use; the package itself is its ``FluxHess``."""
        with self._lock:
            return self._start()

    def version(self) -> str:
        """The running Julia's version (starting Julia if needed)."""
        with self._lock:
            self._start()
            return str(self._jl.seval("string(VERSION)"))

    # -- models -------------------------------------------------------------
    def _model(self, model, dtype):
        """The Julia model for a spec Chain or FluxModel, built once per dtype. Lock held."""
        self._start()
        dtype = np.dtype(dtype).name
        if isinstance(model, Chain):
            jm = self._built((model.to_flux(), 0, _SPEC_SOURCE), dtype)
            if len(model.input_shape) == 1:
                return jm
            key = (model.to_flux(), model.input_shape, dtype)  # samples (N, d) reshaped to Flux's (…, N)
            if key not in self._models:
                self._models[key] = self._fh.with_input_shape(jm, list(reversed(model.input_shape)))
            return self._models[key]
        if not isinstance(model, FluxSource):
            raise UnsupportedModelError(self.unsupported_reason(model))
        key = (model.key, dtype)
        jm = self._models.get(key)
        if jm is None:
            jm = self._built((model.source, model.seed, model.filename), dtype)
            with self._julia_errors(f"preparing the Flux model {model!r} on backend 'julia' failed"):
                if model.layers is not None:
                    jm = self._fh.sublayers(jm, model.layers[0] + 1, model.layers[1])
                if model.input_shape is not None:  # NumPy's (a, b, c) is Julia's (c, b, a)
                    jm = self._fh.with_input_shape(jm, list(reversed(model.input_shape)))
            self._models[key] = jm
        return jm

    def _built(self, source_key, dtype):
        """The model that ``(source, seed, filename)`` builds in ``dtype``, once. Lock held."""
        jm = self._models.get((source_key, dtype))
        if jm is None:
            fh = self._fh
            source, seed, filename = source_key
            T = self._jl.Float64 if dtype == "float64" else self._jl.Float32
            with self._julia_errors(f"building the Flux model from source {source[:200]!r} on backend 'julia' failed"):
                # a spec Chain's LayerNorms mean sqrt(var + eps) on whichever Flux is loaded
                jm = fh.build_model(source, seed=seed, T=T, filename=filename, spec=filename == _SPEC_SOURCE)
            self._models[(source_key, dtype)] = jm
        return jm

    def model(self, model, dtype="float64"):
        """The Julia model of a spec Chain or FluxModel in ``dtype`` (built once), for direct use."""
        with self._lock:
            return self._model(model, dtype)

    def parameters(self, model, dtype="float64") -> np.ndarray:
        """θ of a FluxModel as Julia's ``destructure`` gives it, ``(P,)``."""
        with self._lock:
            jm = self._model(model, dtype)
            with self._julia_errors("parameters of the Flux model on backend 'julia' failed"):
                return _to_numpy(self._fh.parameters(jm))

    def layer_table(self, model) -> list[dict]:
        """Each layer of a FluxModel: its summary, parameter blocks, Dense shape and spec twin."""
        with self._lock:
            jm = self._model(model.with_input_shape(None), "float64")
            with self._julia_errors("this Flux model's parameters cannot be named by layer", UnsupportedModelError):
                table = self._fh.layout(jm)
            return [
                {
                    "summary": str(entry["summary"]),
                    "blocks": [
                        {"name": str(b["name"]), "shape": tuple(int(n) for n in b["shape"]), "offset": int(b["offset"])}
                        for b in entry["blocks"]
                    ],
                    "dense": None if entry["dense"] is None else tuple(int(v) for v in entry["dense"]),
                    "spec": None if entry["spec"] is None else _spec_layer(dict(entry["spec"])),
                }
                for entry in table
            ]

    def to_spec(self, model, input_shape=None):
        """A FluxModel as ``(fluxhess.Chain, θ)``, or :class:`UnsupportedModelError`."""
        shape = None if input_shape is None else list(reversed([int(n) for n in input_shape]))
        with self._lock:
            jm = self._model(model.with_input_shape(None), "float64")
            with self._julia_errors("this Flux model cannot be written as a fluxhess.Chain", UnsupportedModelError):
                layers = [dict(d) for d in self._fh.to_spec(jm, input_shape=shape)]
                theta = _to_numpy(self._fh.parameters(jm))
            try:
                spec, arrays = spec_layers(layers)
            except (KeyError, InputError) as e:
                raise UnsupportedModelError(f"this Flux model cannot be written as a fluxhess.Chain: {e}") from e
        try:
            chain = Chain(*spec, input_shape=input_shape)
        except InputError as e:
            raise UnsupportedModelError(f"this Flux model cannot be written as a fluxhess.Chain: {e}") from e
        flat = chain.flatten(arrays)
        if flat.shape != theta.shape or not np.array_equal(flat, theta):
            raise UnsupportedModelError(
                "this Flux model's parameters are not exactly its layers' arrays "
                f"({theta.shape[0]} parameters, {flat.shape[0]} in the layers its spec twin holds)"
            )
        return chain, theta

    # -- one call into Julia ------------------------------------------------
    @contextlib.contextmanager
    def _julia_errors(self, what: str, otherwise=BackendError):
        """Turns an exception of the Julia calls inside into a fluxhess error (:func:`julia_error`):
        the one place where they are translated. Lock held."""
        try:
            yield
        except FluxHessError:
            raise
        except Exception as e:  # juliacall.JuliaError, or a Python exception Julia passed on
            raise julia_error(e, what, self._error_class(e), otherwise) from e

    def _error_class(self, exc: BaseException) -> str:
        """``"input"`` or ``"backend"``: how FluxHess.jl classes the Julia exception behind ``exc``."""
        julia_exception = getattr(exc, "exception", None)  # juliacall.JuliaError's Julia value
        if julia_exception is None or self._fh is None:
            return "backend"
        try:
            return str(self._fh.error_class(julia_exception))
        except Exception:  # classing must never hide the original error
            return "backend"

    def _call(self, quantity, problem: Problem, *rest, convert=_to_numpy, into=None, named=None, **keywords):
        """``FluxHess.Bridge.<quantity>([into,] model, θ, X, rest...; keywords...)`` in Julia, its
        result converted; an error names the call ``named`` (default: ``quantity``). ``into``
        (C-contiguous, as ``out=`` is checked to be) is written in place."""
        with self._lock:
            fh = self._start()
            jm = self._model(problem.model, problem.dtype)
            keep: list[np.ndarray] = []  # the arrays Julia's views are of, alive for the call
            rest = [self._kind(a.name) if isinstance(a, _Kind) else self._view(a, keep) for a in rest]
            first = () if into is None else (self._view(into, keep, copy=False),)  # written in place
            args = (*first, jm, self._view(problem.params, keep), self._view(problem.X, keep), *rest)
            with self._julia_errors(f"{named or quantity} on backend 'julia' failed for {problem.shapes}"):
                return convert(getattr(fh, quantity)(*args, **keywords))

    def _view(self, value, keep: list, copy: bool = True):
        """A float64/float32 NumPy array of one or two dimensions as the Julia array over its
        memory (``FluxHess.Bridge.numpy_view``), made C-contiguous first (a copy, unless
        ``copy`` is False: then a non-contiguous array goes as it is); the NumPy array is
        appended to ``keep``, which the caller holds until Julia returns. Anything else goes
        as it is. Lock held."""
        if not (isinstance(value, np.ndarray) and value.ndim in (1, 2) and value.dtype.name in _ELTYPES):
            return value
        if not value.flags.c_contiguous:
            if not copy:
                return value
            value = np.ascontiguousarray(value)
        keep.append(value)
        return self._fh.numpy_view(value.ctypes.data, getattr(self._jl, _ELTYPES[value.dtype.name]), *value.shape)

    # -- the quantities -----------------------------------------------------
    def forward(self, problem: Problem):
        return self._call("forward", problem)

    def loss(self, problem: Problem):
        return self._call("loss", problem, problem.Y, problem.loss, problem.agg, convert=float)

    def gradient(self, problem: Problem):
        return self._call("gradient", problem, problem.Y, problem.loss, problem.agg)

    #: Every P×P route of FluxHess.jl writes into the array it is given (``out=`` or the result).
    writes_out = True

    def matrix_bytes(self, model, P: int, itemsize: int, into_out: bool) -> int:
        """Peak memory of a P×P quantity: the result (unless it is written into ``out=``,
        ``into_out``) and the :data:`WORK_BYTES` of working memory FluxHess.jl writes it within."""
        return (0 if into_out else P * P * itemsize) + WORK_BYTES

    def _matrix(self, quantity, kind, problem: Problem, out):
        """A P×P curvature written by Julia straight into ``out`` (or a new NumPy array), panel by
        panel (``FluxHess.curvature!``): no copy, and no second P×P (the result is symmetric,
        so either memory order is the same matrix)."""
        p = problem
        if out is None:
            out = np.empty((p.params.shape[0],) * 2, dtype=p.dtype)
        self._call("curvature_b", p, p.Y, p.loss, p.agg, _Kind(kind), into=out, convert=lambda _: None, named=quantity, workspace=WORK_BYTES)
        return out

    def hessian(self, problem: Problem, out=None):
        return self._matrix("hessian", "hessian", problem, out)

    def ggn(self, problem: Problem, out=None):
        return self._matrix("ggn", "ggn", problem, out)

    def empirical_fisher(self, problem: Problem, out=None):
        return self._matrix("empirical_fisher", "ef", problem, out)

    def hvp(self, problem: Problem, V, kind):
        """``M @ V`` in chunks of columns of ``V``: each chunk's copy of ``V``, Julia's result and
        its copy here within :data:`fluxhess._memory.CHUNK_BYTES`."""
        P, k = V.shape
        out = np.empty((P, k), dtype=problem.dtype)
        step = memory.chunk_size(3 * P * problem.dtype.itemsize, k, memory.CHUNK_BYTES)
        for a in range(0, k, step):
            cols = slice(a, min(a + step, k))
            out[:, cols] = self._call("hvp", problem, problem.Y, V[:, cols], problem.loss, problem.agg, _Kind(kind))
        return out

    def diagonal(self, problem: Problem, kind):
        return self._call("diagonal", problem, problem.Y, problem.loss, problem.agg, _Kind(kind))

    def kron(self, problem: Problem, kind):
        def pairs(out):
            return [(_to_numpy(A), _to_numpy(G)) for A, G in out]

        return self._call("kron", problem, problem.Y, problem.loss, problem.agg, _Kind(kind), convert=pairs)

    def param_jacobian(self, problem: Problem):
        return self._call("param_jacobian", problem)

    def input_jacobian(self, problem: Problem):
        return self._call("input_jacobian", problem)

    def input_hessian(self, problem: Problem):
        return self._call("input_hessian", problem)

    def laplacian(self, problem: Problem):
        return self._call("laplacian", problem)

    def divergence(self, problem: Problem):
        return self._call("divergence", problem)


# --- installing ---------------------------------------------------------------


def setup_julia(out=print, sysimage_too: bool = False) -> dict:
    """Install Julia (if none is found) and the Julia packages, online, showing progress.

    Uses juliapkg, the installer juliacall itself uses: it finds a Julia
    (``PYTHON_JULIAPKG_EXE``, one it installed earlier, ``juliaup``, ``julia`` on
    PATH) or downloads one, then adds the packages of fluxhess's ``juliapkg.json``
    (Flux, Zygote, ForwardDiff and PythonCall) to its project and precompiles
    them; Julia's and Pkg's own progress output is shown as it runs. Then it
    starts Julia in this process and loads FluxHess.jl, so the julia backend is
    ready. Returns (and prints) what went where.

    ``sysimage_too``: also build fluxhess's system image (:mod:`.sysimage`), from which later
    processes start Julia with FluxHess and their first calls already compiled.

    Raises :class:`JuliaUnavailableError` saying what failed and what to do, e.g. without
    network access.
    """
    global _ONLINE
    if os.environ.get("PYTHON_JULIACALL_EXE") and os.environ.get("PYTHON_JULIACALL_PROJECT"):
        out(
            "PYTHON_JULIACALL_EXE and PYTHON_JULIACALL_PROJECT are set, so juliacall uses that Julia and "
            "project as they are and installs nothing. Make sure the project has "
            + ", ".join(PACKAGES)
            + " and PythonCall, e.g.\n  "
            + os.environ["PYTHON_JULIACALL_EXE"]
            + " --project="
            + os.environ["PYTHON_JULIACALL_PROJECT"]
            + " -e 'import Pkg; Pkg.add(["
            + ", ".join(f'"{p}"' for p in (*PACKAGES[1:], "PythonCall"))
            + "])'"
        )
        info = {"executable": os.environ["PYTHON_JULIACALL_EXE"], "project": os.environ["PYTHON_JULIACALL_PROJECT"]}
    else:
        if "juliacall" in sys.modules:
            raise JuliaUnavailableError(
                "Julia was already started in this Python process; run `fluxhess setup-julia` in a fresh process"
            )
        if os.environ.get("PYTHON_JULIAPKG_OFFLINE", "").lower() in ("yes", "true", "1"):
            raise JuliaUnavailableError(
                "PYTHON_JULIAPKG_OFFLINE is set, so nothing can be installed; unset it and run setup again"
            )
        import juliapkg

        juliapkg.offline(False)
        state = juliapkg_state()
        out(f"Resolving the Julia packages of fluxhess into {state['project']} (this downloads on first use)...")
        try:
            juliapkg.resolve()
        except Exception as e:  # juliapkg raises plain Exceptions (a URLError offline)
            raise JuliaUnavailableError(_resolve_failed(e, state["project"])) from e
        _ONLINE = True
        info = {"executable": juliapkg.executable(), "project": juliapkg.project()}
        out(f"Julia: {info['executable']}")
        out(f"Julia project: {info['project']}")
    if sysimage_too:
        image = sysimage.build(info["executable"], info["project"], package_path(), out)
        info["sysimage"] = str(image)
        out(f"System image: {image} (fluxhess starts Julia from it while the packages stay as they are)")
    out("Starting Julia and loading FluxHess (its first load precompiles it; this can take several minutes)...")
    JULIA.julia()
    version = JULIA.version()
    info["julia_version"] = version
    info["module"] = str(package_path())
    out(f"Julia {version} is ready; FluxHess loaded from {info['module']}")
    return info


def _resolve_failed(exc: BaseException, project: str) -> str:
    """What to tell a user whose ``setup-julia`` failed while juliapkg installed (e.g. offline).

    Where Julia's package manager failed (juliapkg runs it in a child process whose output the
    user has just seen), the cause is its exit status, not juliapkg's command line (the whole
    Julia script it ran)."""
    if isinstance(exc, subprocess.CalledProcessError):
        cause = f"Julia's package manager exited with status {exc.returncode}; its error is printed above"
    else:
        cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
    return (
        f"setting up Julia failed: juliapkg could not install Julia and the Julia packages into {project} "
        f"({cause}). This step needs network access (Julia's downloads and the General registry). "
        "Without it: run `fluxhess setup-julia` on a machine that has it and copy its Julia, depot "
        "(JULIA_DEPOT_PATH) and project here; then point PYTHON_JULIACALL_EXE at that julia and "
        "PYTHON_JULIACALL_PROJECT at that project (which must have "
        + ", ".join(PACKAGES)
        + " and PythonCall), or PYTHON_JULIAPKG_EXE at the julia when the project is juliapkg's; "
        "a system image built there is used with PYTHON_JULIACALL_SYSIMAGE"
    )


#: The julia backend of this process (Julia runs once per process).
JULIA = JuliaBackend()
