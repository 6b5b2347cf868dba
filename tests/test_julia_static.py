"""Checks of the Julia side that need no Julia: syntax, declared packages, fixtures, the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
JL_FILES = sorted(ROOT.joinpath("julia").rglob("*.jl"))
#: The package's own source: the entry point, the module file and what it includes (not its tests).
PACKAGE_FILES = [ROOT / "julia" / "FluxHess.jl", *sorted(ROOT.joinpath("julia", "src").glob("*.jl"))]
TEST_DIR = ROOT / "julia" / "test"


def _package_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE_FILES)
FIXTURES = sorted(ROOT.joinpath("julia", "test", "fixtures").glob("*.toml"))


def _error_nodes(node):
    if node.type == "ERROR" or node.is_missing:
        yield node
    for child in node.children:
        yield from _error_nodes(child)


def test_there_is_julia_code():
    names = {p.relative_to(ROOT).as_posix() for p in JL_FILES}
    assert {"julia/FluxHess.jl", "julia/src/FluxHess.jl", "julia/test/runtests.jl"} <= names


def _code_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.split("#", 1)[0].strip()]


def test_test_project_declares_what_the_tests_load():
    """julia/test/Project.toml: exactly the packages the test files load (FluxHess comes with `] test`)."""
    test_project = tomllib.loads(TEST_DIR.joinpath("Project.toml").read_text(encoding="utf-8"))
    used = set()
    for path in TEST_DIR.glob("*.jl"):
        for line in _code_lines(path):
            words = line.replace(",", " ").replace(":", " ").split()
            if words[0] in ("import", "using"):
                used.update(w for w in words[1:] if w[0].isupper() and not w.startswith(("FluxHess", "Flux.")))
    assert set(test_project["deps"]) == used


def test_runtests_includes_every_topic_file():
    """julia/test/runtests.jl includes one file per topic, and every test file is included."""
    code = "\n".join(_code_lines(TEST_DIR / "runtests.jl"))
    topics = sorted(p.name for p in TEST_DIR.glob("*.jl") if p.name not in ("runtests.jl", "testutils.jl"))
    assert len(topics) >= 4
    for name in ["testutils.jl", *topics]:
        assert f'include("{name}")' in code, name


def test_tests_use_the_public_api_only():
    """The Julia tests call FluxHess's public names, never its `_` internals."""
    import re

    for path in TEST_DIR.glob("*.jl"):
        text = path.read_text(encoding="utf-8")
        assert not re.findall(r"FluxHess\._\w+", text), path.name


def test_package_layout_is_the_standard_one():
    """src/FluxHess.jl is the module and includes its files relative to itself; julia/FluxHess.jl,
    the top-level entry point, only includes it; nothing uses Core.include."""
    module = ROOT.joinpath("julia", "src", "FluxHess.jl").read_text(encoding="utf-8")
    assert "\nmodule FluxHess\n" in module and module.rstrip().endswith("end # module FluxHess")
    for path in PACKAGE_FILES[2:]:
        if path.name != "FluxHess.jl":
            assert f'include("{path.name}")' in module, path.name
    assert _code_lines(ROOT / "julia" / "FluxHess.jl") == ['include(joinpath(@__DIR__, "src", "FluxHess.jl"))']
    assert not any("Core.include" in p.read_text(encoding="utf-8") for p in PACKAGE_FILES)


@pytest.mark.parametrize("path", JL_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_julia_file_parses(path):
    tree_sitter = pytest.importorskip("tree_sitter")
    tree_sitter_julia = pytest.importorskip("tree_sitter_julia")
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))
    source = path.read_bytes()
    tree = parser.parse(source)
    bad = [
        f"line {n.start_point[0] + 1}: {source[n.start_byte:n.end_byte][:60]!r}"
        for n in _error_nodes(tree.root_node)
    ]
    assert not tree.root_node.has_error, f"{path.name} does not parse: {bad}"


def test_the_bridge_has_every_python_quantity():
    """Every quantity of the Backend Protocol has a function of the same name in FluxHess.Bridge
    (the P×P ones: curvature!), and so do what the julia backend calls to build and read models."""
    from fluxhess._backends.base import Backend

    text = ROOT.joinpath("julia", "src", "bridge.jl").read_text(encoding="utf-8")
    quantities = [
        name
        for name in vars(Backend)
        if not name.startswith("_") and name not in ("name", "unavailable_reason", "unsupported_reason", "hessian", "ggn", "empirical_fisher")
    ]
    assert quantities
    for name in quantities + ["curvature!", "build_model", "parameters", "error_class"]:
        assert f"function {name}(" in text or f"\n{name}(" in text, name
    for name in ("layout", "to_spec", "sublayers", "with_input_shape", "Hessian", "GGN", "EmpiricalFisher"):
        assert f" {name}," in text or f" {name}\n" in text, name  # imported from FluxHess


def test_exports_do_not_clash_with_flux_or_zygote():
    """FluxHess exports no name that Flux, Zygote or LinearAlgebra export (`using FluxHess, Zygote`
    must leave `hessian` unambiguous); the clashing ones are public, not exported."""
    import re

    module = ROOT.joinpath("julia", "src", "FluxHess.jl").read_text(encoding="utf-8")
    exported = set(re.findall(r"\w+!?", re.search(r"^export (.*?)\n\n", module, re.S | re.M).group(1))) - {"export"}
    assert {"Hessian", "GGN", "EmpiricalFisher", "curvature", "curvature!", "hvp"} <= exported
    assert not exported & {"hessian", "gradient", "jacobian", "kron", "diaghessian", "withgradient", "route", "DenseChain", "Generic"}
    public = re.search(r"^@compat public (.*)$", module, re.M).group(1)
    for name in ("hessian", "gradient", "kron", "Bridge"):
        assert name in public, name


def _project_toml():
    return tomllib.loads(ROOT.joinpath("julia", "Project.toml").read_text(encoding="utf-8"))


def _juliapkg_json():
    return json.loads(ROOT.joinpath("src", "fluxhess", "juliapkg.json").read_text(encoding="utf-8"))


def test_juliapkg_json_develops_the_bundled_package():
    """juliapkg installs FluxHess as a dev package from the folder beside juliapkg.json."""
    from juliapkg.compat import Compat

    project, pkg = _project_toml(), _juliapkg_json()
    assert project["name"] == "FluxHess" and project["version"]
    assert pkg["packages"]["FluxHess"] == {"uuid": project["uuid"], "path": "julia", "dev": True}
    # Flux too, at FluxHess's own bound: a user's model source says `using Flux`, which
    # finds only the active project's direct dependencies.
    flux = {"uuid": project["deps"]["Flux"], "version": project["compat"]["Flux"]}
    assert pkg["packages"]["Flux"] == flux and set(pkg["packages"]) == {"FluxHess", "Flux"}
    folder = ROOT / "src" / "fluxhess" / pkg["packages"]["FluxHess"]["path"]
    assert folder.joinpath("Project.toml").read_bytes() == ROOT.joinpath("julia", "Project.toml").read_bytes()
    assert str(Compat.parse(project["compat"]["julia"])) == str(Compat.parse(pkg["julia"]))
    assert set(project["compat"]) == {"julia"} | (set(project["deps"]) - {"LinearAlgebra", "Random"})


def test_declared_packages_are_the_ones_the_module_loads():
    text = _package_text()
    used = set()
    for line in text.splitlines():
        words = line.replace(",", " ").replace(":", " ").split()
        if words and words[0] in ("import", "using") and not words[1].startswith(".."):  # not FluxHess's own submodule
            used.update(w for w in words[1:2])
    declared = set(_project_toml()["deps"])
    assert used == declared


def test_compat_admits_current_releases():
    """Flux 0.16.11, Zygote 0.7.12, ForwardDiff 1.4.5; juliacall needs Julia ^1.10.3."""
    from juliapkg.compat import Compat, Version

    compat = _project_toml()["compat"]
    current = {"Flux": "0.16.11", "Zygote": "0.7.12", "ForwardDiff": "1.4.5", "PrecompileTools": "1.2.1",
               "Compat": "4.10.0", "Statistics": "1.10.0"}
    for name, version in current.items():
        assert Version.parse(version) in Compat.parse(compat[name]), name
    assert Version.parse("1.10.3") in Compat.parse(_juliapkg_json()["julia"])
    assert "PythonCall" not in _project_toml()["deps"]  # juliacall pins it; we never do


UUIDS = {  # the General registry's UUIDs
    "Flux": "587475ba-b771-5e3f-ad9e-33799f191a9c",
    "Zygote": "e88e6eb3-aa80-5325-afca-941959d7151f",
    "ForwardDiff": "f6369f11-7733-5829-9624-2563aa707210",
    "LinearAlgebra": "37e2e46d-f89d-539d-b4ee-838fcccc9c8e",
    "Random": "9a3f8284-a2c9-5f02-9a11-845980a1fd5c",
    "PrecompileTools": "aea7be01-6a6a-4083-8856-8a6e6704d82a",
    "Compat": "34da2185-b29b-5c13-b0c7-acf172513d20",
    "Statistics": "10745b16-79ce-11e8-11f9-7d13ad32a3b2",
    "NNlib": "872c559c-99b0-510c-b3b7-b6c96a88d5cd",
}


def test_uuids_are_the_registered_ones():
    for name, uuid in _project_toml()["deps"].items():
        assert UUIDS[name] == uuid, name


# --- fixtures -------------------------------------------------------------------

QUANTITIES = {
    "forward", "gradient", "hessian", "ggn", "empirical_fisher", "param_jacobian",
    "input_jacobian", "input_hessian", "laplacian",
    "hvp_hessian", "hvp_ggn", "hvp_ef", "diagonal_hessian", "diagonal_ggn", "diagonal_ef",
    "kron_ggn", "kron_ef", "loss",
}  # fmt: skip


def test_fixtures_are_small_and_cover_every_loss_and_agg():
    assert FIXTURES, "run: python tests/fixtures/make_fixtures.py"
    assert sum(p.stat().st_size for p in FIXTURES) < 512 * 1024
    seen = set()
    for path in FIXTURES:
        fx = tomllib.loads(path.read_text(encoding="utf-8"))
        seen.add((fx["loss"], fx["agg"]))
        assert QUANTITIES <= set(fx["expected"]), path.name
    from fluxhess.losses import AGGS, LOSSES

    assert seen == {(loss, agg) for loss in LOSSES for agg in AGGS}
    cases = [tomllib.loads(p.read_text(encoding="utf-8")) for p in FIXTURES]
    sources = " ".join(fx["source"] for fx in cases)
    assert "bias=false" in sources and "Flux.flatten" in sources and "softmax" in sources
    assert any("divergence" in fx["expected"] for fx in cases)


def _array(t):
    return np.reshape(np.asarray(t["data"], dtype=np.float64), t["shape"], order="F")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_arrays_read_back_in_numpy_order(path):
    """Fortran-order data + shape, as Julia's reshape reads it, gives NumPy's index order."""
    fx = tomllib.loads(path.read_text(encoding="utf-8"))
    X, theta = _array(fx["X"]), _array(fx["theta"])
    out = _array(fx["expected"]["forward"])
    assert out.shape == (X.shape[0], _array(fx["Y"]).shape[1])
    assert _array(fx["expected"]["hessian"]).shape == (theta.size, theta.size)
    H = _array(fx["expected"]["hessian"])
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)


def test_fixture_writer_round_trips_floats_exactly(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    try:
        import make_fixtures
    finally:
        sys.path.pop(0)
    values = np.array([[0.1, -1e-300, 1 / 3], [2.5e16, -0.0, np.pi]])
    text = "\n".join(make_fixtures._array_lines("a", values))
    back = _array(tomllib.loads(text)["a"])
    assert back.shape == values.shape and np.array_equal(back, values)


# --- the wheel --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("fluxhess-*.whl")
    return path


def test_wheel_carries_the_julia_package_and_juliapkg_json(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "fluxhess/juliapkg.json" in names  # where juliapkg looks: juliapkg.json beside the package
        assert json.loads(z.read("fluxhess/juliapkg.json")) == _juliapkg_json()
        for path in [ROOT / "julia" / "Project.toml", *PACKAGE_FILES]:
            name = "fluxhess/" + path.relative_to(ROOT).as_posix()
            assert z.read(name) == path.read_bytes(), name
        assert not any(n.startswith("fluxhess/julia/test") for n in names)


def test_package_path_finds_the_bundled_package():
    from fluxhess._backends.julia import module_path, package_path

    folder = package_path()
    assert folder.joinpath("Project.toml").read_bytes() == ROOT.joinpath("julia", "Project.toml").read_bytes()
    assert module_path().read_bytes() == ROOT.joinpath("julia", "src", "FluxHess.jl").read_bytes()


def _julia_name_table(const: str) -> tuple[str, ...]:
    """The names of ``const NAME = (f => "name", ...)`` in julia/src/spec.jl."""
    import re

    text = ROOT.joinpath("julia", "src", "spec.jl").read_text(encoding="utf-8")
    block = re.search(rf"^const {const} = \((.*?)\n\)", text, re.S | re.M) or re.search(rf"^const {const} = \((.*?)\)$", text, re.M)
    assert block is not None, f"no const {const} in julia/src/spec.jl"
    return tuple(re.findall(r'=>\s*"(\w+)"', block.group(1)))


def test_the_julia_activation_table_is_the_python_registry():
    """One registry of activations: Julia's name tables list exactly fluxhess._activations' names."""
    from fluxhess import _activations as activations

    assert _julia_name_table("ACTIVATIONS") == tuple(activations.ELEMENTWISE)
    assert _julia_name_table("COLUMN_MAPS") == tuple(activations.COLUMNWISE)


def test_every_backend_and_laplace_know_the_same_curvature_kinds():
    """The public kind names (api.KINDS) are the JAX kinds' names, the julia backend's keys
    (each a Julia type that FluxHess.jl declares) and Laplace's curvatures."""
    import re

    from fluxhess import api
    from fluxhess._backends.jax.kinds import KINDS as JAX_KINDS
    from fluxhess._backends.julia import backend as julia_backend
    from fluxhess.laplace.curvature import CURVATURES

    assert set(JAX_KINDS) == set(api.KINDS) == set(julia_backend._KINDS) == set(CURVATURES)
    assert all(JAX_KINDS[name].name == name for name in api.KINDS)
    declared = set(re.findall(r"^struct (\w+) <: Kind end", (ROOT / "julia" / "src" / "problem.jl").read_text(), re.M))
    assert set(julia_backend._KINDS.values()) == declared
    assert set(api.KRON_KINDS) == {name for name, kind in JAX_KINDS.items() if kind.per_sample_terms}
