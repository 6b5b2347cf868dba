"""The install path, exercised: ``fluxhess setup-julia`` (juliapkg) from an empty Julia depot
whose only registry is built here from local package sources, through to a first Hessian
equal to the JAX engine's. It proves that the compat bounds of ``julia/Project.toml`` and
``juliapkg.json`` (with juliacall's own) resolve against the packages given.

It needs, and skips naming what is missing without:

- a Julia executable, found as fluxhess finds one (``PYTHON_JULIACALL_EXE``,
  ``PYTHON_JULIAPKG_EXE``, ``julia`` on PATH); juliapkg is pointed at it with
  ``PYTHON_JULIAPKG_EXE``, so it neither downloads Julia nor asks its version to match;
- ``FLUXHESS_TEST_PACKAGE_SOURCES``: folders (separated by ``os.pathsep``) of package
  source trees, one folder per package with its ``Project.toml``: FluxHess's dependencies
  and theirs, PythonCall's, OpenSSL_jll's (juliapkg adds OpenSSL_jll at the version of
  Python's OpenSSL) and DelimitedFiles (a former standard library: a registered package
  since Julia 1.9, whose source ships in Julia's ``share/julia/stdlib``);
- for JLL packages whose artifacts cannot be downloaded here,
  ``FLUXHESS_TEST_ARTIFACT_OVERRIDES``: ``Overrides.toml`` files (``os.pathsep``-separated)
  naming where those artifacts are. They are merged into the new depot's
  ``artifacts/Overrides.toml``, Julia's own place for artifacts provided from elsewhere;
  the depot holds no package, registry or compiled file before the install.

The child processes see no Julia or juliapkg setting of this one: only the new depot (and
Julia's bundled one, through the trailing separator) with ``HOME`` an empty folder, so no
``~/.julia`` is read; ``JULIA_PKG_SERVER=""``, so packages come from the registry's git
repositories, which are local. Slow: it precompiles Flux, Zygote and PythonCall into the
empty depot (tens of minutes on a few cores).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib
from local_registry import build_registry, registry_compat

import fluxhess as fh

SOURCES = "FLUXHESS_TEST_PACKAGE_SOURCES"
OVERRIDES = "FLUXHESS_TEST_ARTIFACT_OVERRIDES"

#: What the install runs: the ``fluxhess setup-julia`` command, in its own process.
SETUP = "import sys; from fluxhess.cli import main; sys.exit(main(['setup-julia']))"

#: A later process: the julia backend's first Hessian, and where its Flux was loaded from.
FIRST_HESSIAN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fluxhess as fh
    model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 2))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    H = fh.hessian(model, model.init(seed=1), X, y, loss="mse", backend="julia")
    import juliacall  # Julia runs, started by the call above
    # A model written as the docs show it: its source says `using Flux`.
    flux_model = fh.flux_model("using Flux\\nChain(Dense(2 => 3, tanh), Dense(3 => 2))")
    spec, theta = flux_model.to_spec()
    H_source = fh.hessian(flux_model, theta, X, y, loss="mse", backend="julia")
    H_source_jax = fh.hessian(spec, theta, X, y, loss="mse", backend="jax")
    flux = str(juliacall.Main.seval("pathof(FluxHess.Flux)"))
    np.savez(sys.argv[1], H=H, H_source=H_source, H_source_jax=H_source_jax, flux=flux)
    """
)


def _julia_executable() -> str | None:
    for name in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        if os.environ.get(name):
            return shutil.which(os.environ[name])
    return shutil.which("julia")


def _folders(name: str) -> list[Path]:
    return [Path(p) for p in os.environ.get(name, "").split(os.pathsep) if p]


def test_the_child_script_is_python():
    """The slow test's child process runs this text: a syntax error there would only show
    after tens of minutes of installing."""
    tree = ast.parse(FIRST_HESSIAN)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"hessian", "flux_model", "to_spec", "savez"} <= calls


@pytest.fixture(scope="module")
def julia() -> str:
    exe = _julia_executable()
    if exe is None:
        pytest.skip("no Julia executable: set PYTHON_JULIAPKG_EXE or put `julia` on PATH")
    return exe


@pytest.fixture(scope="module")
def sources() -> list[Path]:
    folders = _folders(SOURCES)
    if not folders:
        pytest.skip(f"no package sources: set {SOURCES} to folders of Julia package source trees (Flux, Zygote, "
                    "ForwardDiff, PrecompileTools, PythonCall, OpenSSL_jll, DelimitedFiles and their dependencies)")
    missing = [str(f) for f in folders if not f.is_dir()]
    assert not missing, f"{SOURCES} names folders that do not exist: {missing}"
    return folders


def _overrides_toml(files: list[Path]) -> str:
    """One ``Overrides.toml`` of several: ``hash = "path"`` entries and ``[uuid] name = "path"`` tables."""
    merged: dict = {}
    for f in files:
        for key, value in tomllib.loads(f.read_text(encoding="utf-8")).items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    flat = [f'{k} = "{v}"' for k, v in merged.items() if isinstance(v, str)]
    tables = [f"[{k}]\n" + "".join(f'{n} = "{p}"\n' for n, p in v.items()) for k, v in merged.items() if isinstance(v, dict)]
    return "\n".join(flat + tables)


@pytest.fixture(scope="module")
def install(tmp_path_factory, julia, sources):
    """An empty depot holding only the local registry (and artifact overrides); the environment
    of a child process that installs into it; the folder of its logs."""
    where = tmp_path_factory.mktemp("install")
    registry = build_registry(sources, where / "local")
    depot, home = where / "depot", where / "home"
    (depot / "artifacts").mkdir(parents=True)
    home.mkdir()
    overrides = _folders(OVERRIDES)
    if overrides:
        (depot / "artifacts" / "Overrides.toml").write_text(_overrides_toml(overrides), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JULIA_", "PYTHON_JULIACALL_", "PYTHON_JULIAPKG_"))}
    src = str(Path(fh.__file__).resolve().parents[1])
    env.update(
        HOME=str(home),
        JULIA_DEPOT_PATH=str(depot) + os.pathsep,
        JULIA_PKG_SERVER="",
        PYTHON_JULIAPKG_EXE=julia,
        PYTHON_JULIAPKG_PROJECT=str(where / "project"),
        PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    add = f'import Pkg; Pkg.Registry.add(Pkg.RegistrySpec(url=raw"{registry}"))'
    subprocess.run([julia, "--startup-file=no", "-e", add], env=env, check=True, capture_output=True, text=True)
    assert sorted(p.name for p in depot.iterdir()) == ["artifacts", "registries"]  # nothing installed yet
    return env, where, depot


def _run(argv, env, log: Path, cwd: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(argv, check=False, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert done.returncode == 0, f"{argv[:3]} exited with {done.returncode}; the end of {log}:\n{tail}"


def test_the_registry_holds_the_ranges_pkg_reads_from_each_compat_bound(tmp_path, julia, sources):
    """Every compat specifier of the sources (and of FluxHess) turned into registry ranges here
    is the version set Pkg's own parser (``semver_spec``) gives."""
    projects = [tree / "Project.toml" for folder in sources for tree in folder.iterdir()]
    projects.append(Path(fh.__file__).resolve().parent / "julia" / "Project.toml")
    specs = {s for p in projects if p.is_file() for s in tomllib.loads(p.read_text(encoding="utf-8")).get("compat", {}).values()}
    table = tmp_path / "ranges.toml"
    table.write_text("".join(f'"{s}" = {json.dumps(registry_compat(s))}\n' for s in sorted(specs)), encoding="utf-8")
    check = (
        "import Pkg; using Pkg.Versions: semver_spec, VersionSpec; "
        f'for (s, r) in Pkg.TOML.parsefile(raw"{table}"); semver_spec(s) == VersionSpec(r) || println(repr(s), " ", r); end'
    )
    done = subprocess.run([julia, "--startup-file=no", "-e", check], check=True, capture_output=True, text=True)
    assert len(specs) > 10 and done.stdout == "", f"specifiers whose ranges differ from Pkg's:\n{done.stdout}"


@pytest.mark.slow
def test_setup_julia_into_an_empty_depot_gives_the_jax_hessian(install):
    env, where, depot = install
    _run([sys.executable, "-c", SETUP], env, where / "setup-julia.log", where)
    result = where / "hessian.npz"
    _run([sys.executable, "-c", FIRST_HESSIAN, str(result)], env, where / "hessian.log", where)
    got = np.load(result)
    flux_path = Path(str(got["flux"]))
    assert depot / "packages" in flux_path.parents, f"Flux was loaded from {flux_path}, not the new depot"

    model = fh.Chain(fh.Dense(2, 3, "tanh"), fh.Dense(3, 2))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    expected = fh.hessian(model, model.init(seed=1), X, y, loss="mse", backend="jax")  # FIRST_HESSIAN's problem
    np.testing.assert_allclose(got["H"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["H_source"], got["H_source_jax"], rtol=0, atol=1e-12)
