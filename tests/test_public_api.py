"""The public API as the reference documents it: every function and method annotated, every
argument named in its docstring, an example in each function's docstring, and every
example in the public modules' docstrings true (run as doctests)."""

import doctest
import importlib
import inspect

import pytest

import fluxhess as fh

SUBMODULES = ("fluxhess.jax", "fluxhess.laplace", "fluxhess.plot", "fluxhess.flux")


def _public():
    """``(qualified name, object)`` of everything in ``fluxhess.__all__`` and the submodules' ``__all__``."""
    seen = {}
    for name in fh.__all__:
        seen.setdefault(id(getattr(fh, name)), (f"fluxhess.{name}", getattr(fh, name)))
    for module_name in SUBMODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            seen.setdefault(id(getattr(module, name)), (f"{module_name}.{name}", getattr(module, name)))
    return sorted(seen.values(), key=lambda item: item[0])


def _functions():
    """Public functions, and public methods (``__init__`` included) of public classes."""
    for qualname, obj in _public():
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                continue
            for name, member in vars(obj).items():
                if inspect.isfunction(member) and (name == "__init__" or not name.startswith("_")):
                    yield f"{qualname}.{name}", member, True
        elif inspect.isfunction(obj):
            yield qualname, obj, False


FUNCTIONS = list(_functions())


@pytest.mark.parametrize("qualname, fn, method", FUNCTIONS, ids=[q for q, _, _ in FUNCTIONS])
def test_signature_is_annotated(qualname, fn, method):
    signature = inspect.signature(fn)
    missing = [p for p, v in signature.parameters.items() if v.annotation is inspect.Parameter.empty and p not in ("self", "cls")]
    assert not missing, f"{qualname}: parameters without a type annotation: {missing}"
    if fn.__name__ != "__init__":
        assert signature.return_annotation is not inspect.Signature.empty, f"{qualname}: no return annotation"


@pytest.mark.parametrize(
    "qualname, fn", [(q, f) for q, f, method in FUNCTIONS if not method], ids=[q for q, _, m in FUNCTIONS if not m]
)
def test_function_docstring_names_every_argument_and_has_an_example(qualname, fn):
    doc = inspect.getdoc(fn) or ""
    unnamed = [p for p in inspect.signature(fn).parameters if p not in doc]
    assert not unnamed, f"{qualname}: its docstring does not mention {unnamed}"
    assert "Example" in doc and ">>>" in doc, f"{qualname}: its docstring has no example"
    assert "module docstring" not in doc


#: The modules whose docstrings hold the public functions' examples, and what each needs
#: (the two that compile many JAX functions or train several MAPs run with --slow).
DOCTEST_MODULES = [
    ("fluxhess.api", ()),
    ("fluxhess.model", ()),
    pytest.param("fluxhess.jax", ("flax",), marks=pytest.mark.slow),
    ("fluxhess.train", ()),
    ("fluxhess.compare", ()),
    ("fluxhess.diagnostics", ()),
    ("fluxhess._backends", ()),
    ("fluxhess.convert", ("torch", "flax")),
    ("fluxhess._torch_params", ("torch",)),
    ("fluxhess.plot", ("matplotlib",)),
    pytest.param("fluxhess.laplace.marglik", (), marks=pytest.mark.slow),
    ("fluxhess._backends.julia.flux_model", ()),
]


@pytest.mark.parametrize("module_name, needs", DOCTEST_MODULES)
def test_docstring_examples_hold(module_name, needs):
    for package in needs:
        pytest.importorskip(package, reason=f"the examples of {module_name} use {package} (make peers installs it)")
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, raise_on_error=False, verbose=False)
    assert result.attempted > 0, f"{module_name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module_name} failed (run python -m doctest on it)"
