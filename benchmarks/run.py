"""Side-by-side benchmark of fluxhess against every installed peer library.

    python benchmarks/run.py            # P ≈ 5k and 20k, N = 1000, float64 (long: tens of minutes)
    python benchmarks/run.py --quick    # tiny sizes: a smoke test of every library, seconds
    python benchmarks/run.py --dtype float32 --only hessian,ggn
    python benchmarks/run.py --problems "cnn P=6090"   # the CNN alone (problems.cnn_problem)
    python benchmarks/run.py --problems "cnn P=6090 N=16,cnn P=6090" --cnn-n 16,500   # and on its first 16 samples

Where a Julia runtime exists, the julia backend runs as a library beside the JAX one
("fluxhess julia"), and the Conv and anonymous-layer Flux models (problems.GENERIC)
compare its generic route with the per-sample loop it replaced.

Installs nothing: a peer that is not installed is listed as such (install the peers with
``make peers``). For each problem and quantity,
every library runs the same model, weights, data and dtype in this one process: one
warm-up call each (JAX compiles there), then ``--repeats`` rounds that call each library in
turn, so a change of machine load hits all of them alike; the table reports medians.
Alongside: the machine's GEMM rate measured in the same run, the flop floor of a P×P
curvature (``N·P²`` flops: one triangle of a rank-N update), the rise of peak resident
memory during each call, and a check that every library computed the same quantity
(agreement with fluxhess up to a constant factor α, e.g. laplace-torch's ½ for
regression). The table goes to stdout and to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Every library's result on the same kind of memory pages. NumPy alone asks the kernel for
# transparent huge pages (madvise) on large arrays; where the kernel's THP "defrag" setting
# is "madvise" (the usual default) each fresh P×P result then waits for memory compaction
# when memory is fragmented: 0.35–0.57 s for 237 MB on a long-running 2-core VM, against
# 0.09–0.14 s with 4 KiB pages, which is what torch's allocator (every peer) gets. Set
# NUMPY_MADVISE_HUGEPAGE=1 to measure with NumPy's default.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fluxhess as fh  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import problems  # noqa: E402
import report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    problem: str
    dtype: str
    P: int
    N: int
    quantity: str
    library: str
    peer: bool
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    result_bytes: int = 0
    data_bytes: int = 0
    alpha: float | None = None  # result ≈ alpha · fluxhess's
    residual: float | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def _result_bytes(problem, quantity) -> int:
    item = np.dtype(problem.dtype).itemsize
    if quantity in peers.MATRICES:
        return problem.P**2 * item
    if quantity == "laplacian":
        return problem.Y.size * item
    return problem.P * item


class Probe:
    """Fixed entries at which every library's result is compared with fluxhess's."""

    def __init__(self, problem, quantity, count=4000):
        self.quantity = quantity
        rng = np.random.default_rng(1)
        self.rows = rng.integers(0, problem.P, count)
        self.cols = rng.integers(0, problem.P, count)
        self.perm = None if problem.flux or problem.jax_function else problem.torch_order()  # torch peers run only the MLPs

    def sample(self, value, layout: str) -> np.ndarray | None:
        if self.quantity.startswith("kron"):
            return None
        arr = value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)
        if self.quantity in peers.MATRICES:
            r, c = (self.perm[self.rows], self.perm[self.cols]) if layout == "torch" else (self.rows, self.cols)
            return np.array(arr[r, c], dtype=np.float64)
        if self.quantity == "laplacian":
            return np.array(arr, dtype=np.float64).ravel()
        return np.array(arr[self.perm] if layout == "torch" else arr, dtype=np.float64)


def _agreement(sample, reference):
    if sample is None or reference is None or sample.shape != reference.shape:
        return None, None
    alpha = float(sample @ reference / (reference @ reference))
    residual = float(np.linalg.norm(sample - alpha * reference) / max(np.linalg.norm(sample), 1e-300))
    return alpha, residual


def compare(problem, quantity, args, first_seconds: dict) -> list[Row]:
    """Every library on one (problem, quantity): warm-up, then interleaved timed rounds."""
    probe, reference = Probe(problem, quantity), None
    rows, live = [], []
    for impl in peers.IMPLS:
        if args.libraries and impl.library not in args.libraries.split(","):
            continue
        row = Row(problem.name, problem.dtype, problem.P, problem.n, quantity, impl.library, impl.peer,
                  result_bytes=_result_bytes(problem, quantity), data_bytes=problem.data_bytes)
        if impl.missing() or (problem.flux and not impl.any_model) or (problem.jax_function and not impl.jax_function):
            continue
        try:
            fn = impl.build(problem, quantity)
        except Exception as e:  # a peer that fails to set up is reported, not fatal
            row.note = f"setup failed: {type(e).__name__}: {str(e)[:80]}"
            rows.append(row)
            continue
        if fn is None:
            continue
        key = (impl.library, quantity, problem.dtype)
        if key in first_seconds and not impl.library.startswith("fluxhess"):
            smaller_P, smaller_N, seconds = first_seconds[key]
            predicted = seconds * (problem.P / smaller_P) ** 2 * (problem.n / smaller_N)
            if predicted > args.limit:
                row.note = (f"skipped: predicted {predicted:.0f} s (> --limit {args.limit:.0f} s) from {seconds:.1f} s "
                            f"at P={smaller_P}, N={smaller_N}")
                rows.append(row)
                continue
        print(f"  {problem.name} {problem.dtype} {quantity:<13} {impl.library:<26}", end="", flush=True)
        try:
            warm = measure.run_once(fn)
        except NotImplementedError:
            print(" not offered")
            continue
        except Exception as e:
            row.note = f"failed: {type(e).__name__}: {str(e)[:80]}"
            print(" " + row.note)
            rows.append(row)
            continue
        print(f" first call {warm.seconds:.2f} s")
        first_seconds[key] = (problem.P, problem.n, warm.seconds)
        sample = probe.sample(warm.value, impl.layout)
        del warm.value
        if reference is None:  # the first library of the table: fluxhess's JAX backend where it runs
            reference = sample
        row.alpha, row.residual = _agreement(sample, reference)
        if warm.seconds > args.long and not impl.compiles:
            row.seconds, row.peak_bytes = [warm.seconds], warm.peak_bytes
            row.note = f"1 run (first call > {args.long:.0f} s)"
        else:
            live.append((row, fn))
        rows.append(row)
    for _ in range(args.repeats):
        for row, fn in live:
            run = measure.run_once(fn)
            del run.value
            row.seconds.append(run.seconds)
            if run.peak_bytes is not None:
                row.peak_bytes = max(row.peak_bytes or 0, run.peak_bytes)
    return rows


def _save_partial(rows, args) -> None:
    """The rows so far, so that a crash or a stop late in a long run loses nothing measured."""
    RESULTS.mkdir(exist_ok=True)
    path = (args.out or RESULTS / "latest.md").with_suffix(".partial.json")
    path.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="float64")
    parser.add_argument("--only", default="", help="comma-separated quantities (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--limit", type=float, default=180.0,
                        help="skip a library whose time, extrapolated ∝ N·P² from an earlier problem, exceeds this (s)")
    parser.add_argument("--cnn-n", default=str(problems.CNN_SAMPLES),
                        help="comma-separated sample counts of the CNN problem, in this order (e.g. '16,500': a peer too "
                        "slow at 500 is then skipped with its time extrapolated from 16)")
    parser.add_argument("--long", type=float, default=20.0,
                        help="a first call longer than this (s) is the only run (not for JAX libraries, whose first call compiles)")
    parser.add_argument("--problems", default="", help="comma-separated curvature problems, e.g. 'P=5k' (default: all)")
    parser.add_argument("--libraries", default="", help="comma-separated libraries (default: all installed)")
    parser.add_argument("--no-laplacian", action="store_true")
    parser.add_argument("--no-jax-function", action="store_true", help="skip the plain-JAX-function problem (fluxhess.from_jax)")
    parser.add_argument("--no-generic", action="store_true",
                        help="skip the julia backend's Conv and anonymous-layer models")
    parser.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/<time>.md)")
    args = parser.parse_args(argv)
    if args.quick:  # a smoke test: its times mean nothing, so no idle before each call
        measure.SETTLE_SECONDS = 0.0

    quantities = [q for q in args.only.split(",") if q] or peers.CURVATURE + ["laplacian"]
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    missing = {impl.library: impl.missing() for impl in peers.IMPLS if impl.missing()}
    started = time.time()
    loads = [measure.load()]
    print(f"benchmark on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {loads[0]:.1f}, "
          f"NUMPY_MADVISE_HUGEPAGE={os.environ['NUMPY_MADVISE_HUGEPAGE']}")
    rates = {dt: measure.gemm_rates(dt) for dt in dtypes}
    print("GEMM GFLOP/s:", json.dumps({dt: {k: round(v, 1) for k, v in r.items()} for dt, r in rates.items()}))

    rows: list[Row] = []
    first_seconds: dict = {}
    for dt in dtypes:
        cnns = [problems.cnn_problem(args.quick, dt, n=int(n)) for n in ([16] if args.quick else args.cnn_n.split(","))]
        for problem in problems.curvature_problems(args.quick, dt) + cnns:
            if args.problems and problem.name not in args.problems.split(","):
                continue
            for q in quantities:
                if q in peers.CURVATURE:
                    rows += compare(problem, q, args, first_seconds)
                    loads.append(measure.load())
                    _save_partial(rows, args)
        if fh.backends()["julia"] is None and not args.no_generic and dt == "float64":
            for problem in problems.generic_problems(args.quick, dt):
                if args.problems and problem.name not in args.problems.split(","):
                    continue
                for q in [q for q in quantities if q in peers.MATRICES]:
                    rows += compare(problem, q, args, first_seconds)
                    _save_partial(rows, args)
        if not args.no_jax_function:
            for problem in problems.jax_function_problems(args.quick, dt):
                if args.problems and problem.name not in args.problems.split(","):
                    continue
                for q in [q for q in quantities if q in peers.MATRICES]:
                    rows += compare(problem, q, args, first_seconds)
                    _save_partial(rows, args)
        if "laplacian" in quantities and not args.no_laplacian:
            rows += compare(problems.laplacian_problem(args.quick, dt), "laplacian", args, first_seconds)
            loads.append(measure.load())
    rates_after = {dt: measure.gemm_rates(dt) for dt in dtypes}

    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"NUMPY_MADVISE_HUGEPAGE={os.environ['NUMPY_MADVISE_HUGEPAGE']}",
        "load_min_max": [round(min(loads), 1), round(max(loads), 1)],
        "gemm_before": rates,
        "gemm_after": rates_after,
        "repeats": args.repeats,
        "not_installed": missing,
    }
    text = report.render(rows, meta)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S.md")
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
