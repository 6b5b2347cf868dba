"""The ``fluxhess`` command: ``demo``, ``info``, ``setup-julia``.

Each subcommand is a function ``(args) -> int`` registered in :data:`COMMANDS`
with the function that adds its arguments.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .compare import add_arguments as compare_arguments
from .compare import command as compare_command


def _summary(name: str, M: np.ndarray) -> str:
    eig = np.linalg.eigvalsh(M)
    return (
        f"{name}: shape {M.shape}, symmetric {np.array_equal(M, M.T)}, "
        f"‖·‖_F {np.linalg.norm(M):.6g}, trace {np.trace(M):.6g}\n"
        f"  eigenvalues: min {eig[0]:.6g}, max {eig[-1]:.6g}, "
        f"negative {int(np.sum(eig < -1e-12 * abs(eig).max()))} of {eig.size}\n"
        f"  all: {np.array2string(eig, precision=4, max_line_width=100)}"
    )


def _why(asked: str, chosen: str) -> str:
    """Why ``chosen`` runs: asked for by name, or what ``auto`` found."""
    if asked != "auto":
        return f"as asked with --backend {asked}"
    if chosen == "julia":
        return "because a Julia runtime with the FluxHess packages is installed (auto prefers it)"
    from ._backends import backends

    reason = backends()["julia"] or ""
    return (
        f"because the julia backend is unavailable: {reason.split(' (')[0]} "
        "(`fluxhess info` says why in full; `fluxhess setup-julia` installs Julia)"
    )


def demo(args) -> int:
    """Seed question 4: the loss Hessian and empirical Fisher of a small Flux-style model."""
    import fluxhess as fh
    from ._backends import get as get_backend

    model = fh.Chain(fh.Flatten(), fh.Dense(2, 5), fh.Dense(5, 1), fh.Activation("sigmoid"))
    theta = model.init(seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 2))
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    backend = args.backend
    chosen = get_backend(backend, model).name
    in_julia = f"; in Julia: {model.to_flux()}" if chosen == "julia" else ""
    print(f"model: {model}  (P = {model.num_params} parameters{in_julia})")
    print(f"data: X {X.shape}, y {y.shape}; loss = crossentropy, agg = sum")
    print(f"backend = {chosen}, {_why(backend, chosen)}")
    print(model.layout)
    t = time.perf_counter()
    H = fh.hessian(model, theta, X, y, loss="crossentropy", backend=backend)
    t_h = time.perf_counter() - t
    t = time.perf_counter()
    F = fh.empirical_fisher(model, theta, X, y, loss="crossentropy", backend=backend)
    t_f = time.perf_counter() - t
    print(_summary("Hessian", H) + f"\n  computed in {t_h:.3f} s")
    print(_summary("Empirical Fisher", F) + f"\n  computed in {t_f:.3f} s")
    G = fh.ggn(model, theta, X, y, loss="crossentropy", backend=backend)
    print(f"‖H − GGN‖_F / ‖H‖_F = {np.linalg.norm(H - G) / np.linalg.norm(H):.4g}; "
          f"‖EF − GGN‖_F / ‖GGN‖_F = {np.linalg.norm(F - G) / np.linalg.norm(G):.4g}")
    from .laplace.demo import laplace_step

    laplace_step(backend)
    return 0


def info(args) -> int:
    """Versions and which backends can run here (and why not)."""
    import jax

    import fluxhess as fh

    print(f"fluxhess {fh.__version__}, numpy {np.__version__}, jax {jax.__version__}, python {sys.version.split()[0]}")
    for name, reason in fh.backends().items():
        print(f"  {name:6} {'available' if reason is None else 'unavailable: ' + reason}")
    from ._backends.julia import juliapkg_state

    state = juliapkg_state()
    print(f"  `fluxhess setup-julia` installs Julia under {state['install']} and its packages into {state['project']}")
    return 0


def setup_julia(args) -> int:
    """Install Julia and the Julia packages of the julia backend (online, visible)."""
    from ._backends.julia import setup_julia as run_setup

    run_setup(sysimage_too=args.sysimage)
    return 0


def _setup_julia_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sysimage", action="store_true", help="also build a system image (PackageCompiler.jl) that makes Julia's first calls fast")


def _backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="auto (default), jax or julia")


COMMANDS = {
    "demo": (demo, _backend_arg),
    "info": (info, lambda p: None),
    "setup-julia": (setup_julia, _setup_julia_arguments),
    "compare": (compare_command, compare_arguments),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fluxhess", description="Second-order derivatives of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        add_args(p)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    from .errors import FluxHessError

    try:
        return args.func(args)
    except FluxHessError as e:
        print(f"fluxhess {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
