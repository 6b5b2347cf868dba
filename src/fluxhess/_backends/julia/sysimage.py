"""A system image for the julia backend: Julia starts with FluxHess, PythonCall and the code
of a user's first calls already compiled (``fluxhess setup-julia --sysimage``).

- :func:`build` runs PackageCompiler.jl (a build-time tool, never added to fluxhess's project:
  the one Julia's load path has, e.g. installed in the default environment ``@v#.#`` or
  found through ``JULIA_LOAD_PATH`` where there is no network, else installed into a
  temporary Julia environment of its own) to build
  ``FluxHess`` and ``PythonCall`` of the Julia project into :func:`image_path`. Its
  precompile workload is Python: Julia runs :mod:`.sysimage_workload` through
  PythonCall, whose fluxhess computes every quantity on backend ``"julia"`` through
  juliacall, so that the array conversions, the models built from source and every
  quantity are compiled into the image. The image is written to a temporary file and
  renamed into place, with a stamp beside it.
- :func:`usable` is the image while its stamp matches the project's ``Manifest.toml`` and
  the bundled FluxHess sources, else None: after an update of either, Julia starts without
  it (and loads the packages as usual) rather than from stale compiled code. The julia
  backend starts Julia from it when it is usable, through ``PYTHON_JULIACALL_SYSIMAGE``,
  unless the user set that variable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: The name of the image in the Julia project folder (plus the platform's library suffix).
NAME = "fluxhess-sysimage"

#: The Julia program that builds the image: ``julia build.jl <project> <image> <workload.jl>``.
_BUILD = """
using PackageCompiler
project, image, workload = ARGS
create_sysimage(["FluxHess", "PythonCall"]; project, sysimage_path = image,
                precompile_execution_file = workload)
"""

#: Exits 0 when ``using PackageCompiler`` works without installing it: PackageCompiler 2 in an
#: environment of Julia's load path (the default ``@v#.#``, or a ``JULIA_LOAD_PATH`` entry).
_HAS_PACKAGECOMPILER = """
id = Base.identify_package("PackageCompiler")
exit(id !== nothing && pkgversion(Base.require(id)).major == 2 ? 0 : 1)
"""

#: The precompile workload PackageCompiler runs in the project: Python through PythonCall.
_WORKLOAD = """
using PythonCall
pyimport("fluxhess._backends.julia.sysimage_workload").run()
"""


def _suffix() -> str:
    return {"win32": "dll", "darwin": "dylib"}.get(sys.platform, "so")


def image_path(project: str | os.PathLike) -> Path:
    """Where the image of the Julia ``project`` folder lives."""
    return Path(project) / f"{NAME}.{_suffix()}"


def _stamp_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def stamp(project: str | os.PathLike, package: str | os.PathLike) -> dict:
    """What an image was built from: the SHA-256 of the project's Manifest(s) and of the FluxHess
    package's files (``Project.toml`` and its ``.jl`` sources)."""
    manifests = hashlib.sha256()
    for path in sorted(Path(project).glob("Manifest*.toml")):
        manifests.update(path.read_bytes())
    sources = hashlib.sha256()
    root = Path(package)
    for path in sorted([root / "Project.toml", *root.joinpath("src").rglob("*.jl")]):
        sources.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {"manifest": manifests.hexdigest(), "fluxhess": sources.hexdigest()}


def usable(project: str | os.PathLike, package: str | os.PathLike) -> Path | None:
    """The image of ``project`` when it exists and was built from the present Manifest and
    FluxHess sources (its stamp), else None."""
    image = image_path(project)
    try:
        recorded = json.loads(_stamp_path(image).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not image.is_file() or recorded.get("built_from") != stamp(project, package):
        return None
    return image


def _has_packagecompiler(julia_tools: list[str], env: dict) -> bool:
    """Whether ``using PackageCompiler`` (version 2) works in the build's environment without installing it."""
    return subprocess.run([*julia_tools, "-e", _HAS_PACKAGECOMPILER], env=env, capture_output=True, check=False).returncode == 0


def build(julia: str, project: str | os.PathLike, package: str | os.PathLike, out=print) -> Path:
    """Build the image of ``project`` with the Julia executable ``julia`` (its output shown as it
    runs) and return its path.

    PackageCompiler 2 is used as found on Julia's load path (installed in the default
    environment ``@v#.#``, or in an environment or package folder of ``JULIA_LOAD_PATH``);
    otherwise it is installed into a temporary environment, which needs network access.
    Needs a C compiler, as PackageCompiler does. Raises :class:`fluxhess.JuliaUnavailableError`
    saying which step failed; the julia backend then still works, only its first calls are slower.
    """
    from ...errors import JuliaUnavailableError

    image = image_path(project)
    env = {
        **os.environ,
        # The workload's Python is this one (PythonCall, no Conda), and its fluxhess uses this
        # Julia and project as they are (no juliapkg resolve inside the build).
        "JULIA_PYTHONCALL_EXE": sys.executable,
        "JULIA_CONDAPKG_BACKEND": "Null",
        "PYTHON_JULIACALL_EXE": julia,
        "PYTHON_JULIACALL_PROJECT": str(project),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH")])),
    }
    env.pop("PYTHON_JULIACALL_SYSIMAGE", None)
    built_from = stamp(project, package)  # what the build reads: sources changed meanwhile make the image stale
    with tempfile.TemporaryDirectory(prefix="fluxhess-sysimage-") as tmp:
        tools, build_jl, workload = Path(tmp, "tools"), Path(tmp, "build.jl"), Path(tmp, "workload.jl")
        build_jl.write_text(_BUILD, encoding="utf-8")
        workload.write_text(_WORKLOAD, encoding="utf-8")
        partial = image.with_name(image.name + ".partial")  # beside the image: the rename is atomic
        julia_tools = [julia, f"--project={tools}", "--startup-file=no"]
        steps = [("building the system image (this takes 5 to 20 minutes)",
                  [*julia_tools, str(build_jl), str(project), str(partial), str(workload)])]
        if _has_packagecompiler(julia_tools, env):
            out("Using the PackageCompiler.jl that Julia's load path has")
        else:
            steps.insert(0, ("installing PackageCompiler.jl into a temporary environment",
                             [*julia_tools, "-e", 'import Pkg; Pkg.add(name="PackageCompiler", version="2")']))
        for what, command in steps:
            out(f"{what[0].upper()}{what[1:]}...")
            proc = subprocess.run(command, env=env)
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                raise JuliaUnavailableError(
                    f"the system image was not built: {what} failed (exit status {proc.returncode}; Julia's "
                    "output is above). PackageCompiler needs network access to install it, and a C compiler "
                    "(gcc or clang). The julia backend works without the image; only its first calls are slower"
                )
        os.replace(partial, image)
    stamp_file = _stamp_path(image)
    tmp_stamp = stamp_file.with_name(stamp_file.name + ".tmp")
    tmp_stamp.write_text(json.dumps({"julia": julia, "built_from": built_from}, indent=1), encoding="utf-8")
    os.replace(tmp_stamp, stamp_file)
    return image
