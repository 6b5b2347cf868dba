"""Starting Julia and installing it, checked without a Julia runtime: the options juliacall is
started with (fluxhess's system image, quiet inside IPython), the system image's stamp, and
``setup-julia`` without network access."""

from __future__ import annotations

import json
import os
import sys
import types
import urllib.error
from pathlib import Path

import pytest

import fluxhess as fh
from fluxhess._backends.julia import backend as julia_backend
from fluxhess._backends.julia import sysimage
from fluxhess._backends.julia import package_path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty Julia project folder as juliapkg's, and no juliacall option set by the user."""
    for name in list(os.environ):
        if name.startswith("PYTHON_JULIACALL_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "julia_env"
    folder.mkdir()
    (folder / "Manifest.toml").write_text('julia_version = "1.10.5"\n[[deps.Flux]]\n')
    monkeypatch.setitem(julia_backend.juliapkg_state(), "project", str(folder))
    return folder


def _fake_image(project):
    image = sysimage.image_path(project)
    image.write_bytes(b"not really an image")
    stamp = {"julia": "/opt/julia/bin/julia", "built_from": sysimage.stamp(project, package_path())}
    image.with_name(image.name + ".json").write_text(json.dumps(stamp))
    return image


def test_without_an_image_or_ipython_juliacall_gets_no_options(project):
    assert julia_backend._start_options() == {}


def test_a_usable_image_is_started_from(project):
    image = _fake_image(project)
    assert sysimage.usable(project, package_path()) == image
    assert julia_backend._start_options() == {"PYTHON_JULIACALL_SYSIMAGE": str(image)}


def test_an_image_of_other_packages_is_not_used(project):
    _fake_image(project)
    (project / "Manifest.toml").write_text('julia_version = "1.10.5"\n[[deps.Flux]]\nversion = "0.16.12"\n')
    assert sysimage.usable(project, package_path()) is None
    assert julia_backend._start_options() == {}


def test_the_users_sysimage_choice_wins(project, monkeypatch):
    _fake_image(project)
    monkeypatch.setenv("PYTHON_JULIACALL_SYSIMAGE", "/elsewhere/theirs.so")
    assert "PYTHON_JULIACALL_SYSIMAGE" not in julia_backend._start_options()


def test_inside_ipython_juliacalls_extension_is_loaded_without_its_notice(project, monkeypatch):
    """juliacall prints "Detected IPython. Loading juliacall extension..." into the user's cell
    only when the option is unset; set to yes, it loads the extension (Julia's output in the cell)
    and prints nothing."""
    shell = object()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert julia_backend._start_options() == {"PYTHON_JULIACALL_AUTOLOAD_IPYTHON_EXTENSION": "yes"}
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert julia_backend._start_options() == {}  # IPython imported, but no session: nothing to load
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setenv("PYTHON_JULIACALL_AUTOLOAD_IPYTHON_EXTENSION", "no")
    assert julia_backend._start_options() == {}  # the user's choice


def test_the_options_apply_to_the_import_only(project, monkeypatch):
    """juliacall reads its options while it is imported; the caller's environment is left as it was."""
    image = _fake_image(project)
    seen = {}

    class Finder:  # `import juliacall` finds this stand-in, which records the options it sees
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "juliacall":
                return None
            import importlib.machinery

            class Loader:
                @staticmethod
                def create_module(spec):
                    seen.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON_JULIACALL_")})
                    return types.ModuleType("juliacall")

                @staticmethod
                def exec_module(module):
                    pass

            return importlib.machinery.ModuleSpec("juliacall", Loader())

    monkeypatch.delitem(sys.modules, "juliacall", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.setenv("PYTHON_JULIAPKG_OFFLINE", "yes")
    try:
        julia_backend._import_juliacall()
    finally:
        sys.modules.pop("juliacall", None)
    assert seen == {"PYTHON_JULIACALL_SYSIMAGE": str(image)}
    assert "PYTHON_JULIACALL_SYSIMAGE" not in os.environ


@pytest.fixture
def offline_juliapkg(project, monkeypatch):
    """juliapkg as it is without network: the test sets what its ``resolve`` raises."""
    import juliapkg

    monkeypatch.setitem(juliapkg.state.STATE, "offline", juliapkg.state.STATE.get("offline"))
    monkeypatch.setitem(juliapkg.state.STATE, "resolved", juliapkg.state.STATE.get("resolved"))
    monkeypatch.setattr(julia_backend, "_ONLINE", False)
    monkeypatch.delenv("PYTHON_JULIAPKG_OFFLINE", raising=False)
    if "juliacall" in sys.modules:
        pytest.skip("juliacall is imported in this process")
    return juliapkg


def test_setup_julia_offline_says_what_failed_and_what_to_do(project, offline_juliapkg, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(offline_juliapkg, "resolve", offline)
    with pytest.raises(fh.JuliaUnavailableError) as info:
        julia_backend.setup_julia(out=lambda *a: None)
    text = str(info.value)
    for part in ("setting up Julia failed", str(project), "URLError", "name resolution", "network access",
                 "PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE", "PYTHON_JULIACALL_SYSIMAGE"):
        assert part in text, part
    assert "Traceback" not in text and "\n" not in text
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_setup_julia_names_a_failed_package_install_by_its_status(project, offline_juliapkg, monkeypatch):
    """Offline, juliapkg's Julia child fails (no General registry); the message gives its exit
    status and what to do, not juliapkg's command line (the whole Julia script)."""
    import subprocess

    script = "import Pkg\nPkg.Registry.update()\nPkg.precompile()"

    def fails(*args, **kwargs):
        raise subprocess.CalledProcessError(1, ["/opt/julia/bin/julia", f"--project={project}", "-e", script])

    monkeypatch.setattr(offline_juliapkg, "resolve", fails)
    with pytest.raises(fh.JuliaUnavailableError) as info:
        julia_backend.setup_julia(out=lambda *a: None)
    text = str(info.value)
    for part in ("setting up Julia failed", str(project), "package manager exited with status 1",
                 "printed above", "network access", "PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        assert part in text, part
    assert "Pkg.Registry" not in text and "\n" not in text


def test_the_cli_reports_it_in_one_line(project, monkeypatch, capsys):
    from fluxhess import cli

    def fail(out=print, sysimage_too=False):
        raise fh.JuliaUnavailableError("setting up Julia failed: no network")

    monkeypatch.setattr(julia_backend, "setup_julia", fail)
    monkeypatch.setattr("fluxhess._backends.julia.setup_julia", fail)
    assert cli.main(["setup-julia"]) == 2
    assert capsys.readouterr().err.strip() == "fluxhess setup-julia: JuliaUnavailableError: setting up Julia failed: no network"


def test_a_failed_image_build_leaves_no_image_and_says_which_step(project, monkeypatch, tmp_path):
    calls = []

    def run(command, env, **kw):  # PackageCompiler is not on the load path, installs, then the build fails
        calls.append((command, env))
        return types.SimpleNamespace(returncode=0 if len(calls) == 2 else 1)

    monkeypatch.setattr(sysimage.subprocess, "run", run)
    with pytest.raises(fh.JuliaUnavailableError, match="building the system image .* failed .*C compiler"):
        sysimage.build("/opt/julia/bin/julia", project, package_path(), out=lambda *a: None)
    assert not sysimage.image_path(project).exists() and sysimage.usable(project, package_path()) is None
    (probe, install, build), env = [c for c, _ in calls], calls[2][1]
    assert "PackageCompiler" in probe[-1] and "Pkg.add" in install[-1] and str(project) in build
    assert env["JULIA_PYTHONCALL_EXE"] == sys.executable and env["PYTHON_JULIACALL_PROJECT"] == str(project)


def test_a_packagecompiler_on_the_load_path_is_used_without_installing(project, monkeypatch):
    commands = []

    def run(command, env, **kw):
        commands.append(command)
        return types.SimpleNamespace(returncode=0 if len(commands) == 1 else 1)

    monkeypatch.setattr(sysimage.subprocess, "run", run)
    with pytest.raises(fh.JuliaUnavailableError, match="building the system image"):
        sysimage.build("/opt/julia/bin/julia", project, package_path(), out=lambda *a: None)
    assert len(commands) == 2 and not any("Pkg.add" in part for part in commands[1])


def test_a_built_image_is_stamped_and_then_used(project, monkeypatch):
    def run(command, env, **kw):
        if command[-2].endswith(".partial"):  # the build: write the image where it was asked for
            Path(command[-2]).write_bytes(b"image")
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(sysimage.subprocess, "run", run)
    image = sysimage.build("/opt/julia/bin/julia", project, package_path(), out=lambda *a: None)
    assert image == sysimage.image_path(project) and image.read_bytes() == b"image"
    assert sysimage.usable(project, package_path()) == image
    assert not list(project.glob("*.partial")) and not list(project.glob("*.tmp"))
