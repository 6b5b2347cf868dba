"""The benchmark's Markdown report: one table per problem and quantity, then the targets
(issue 6: fluxhess against its peers; issue 13: the julia backend against the JAX one and
its generic route against the per-sample loop it replaced; issue 24: its Hessian of a Flux
model against ForwardDiff over Zygote of the batch loss)."""

from __future__ import annotations

from itertools import groupby

MATRICES = ("hessian", "ggn", "ef")

#: Speed-up of fluxhess over the fastest peer that each quantity must reach (others: 1×).
SPEEDUP_TARGETS = {"hessian": 3.0, "ggn": 2.0, "ef": 1.5}
#: The same on a CNN (issue 24; diagonals and KFAC: 1×).
CNN_SPEEDUP_TARGETS = {"hessian": 3.0, "ggn": 1.5, "ef": 1.0}
FLOOR_FACTOR = 2.0  # within 2× of N·P² flops at the measured GEMM rate
MEMORY_FACTOR = 1.3  # peak ≤ 1.3 × (result + data)
LAPLACIAN_VS_HESSIAN_TRACE = 5.0
JULIA_VS_JAX = 1.5  # the julia backend's time ≤ 1.5 × the JAX backend's, every quantity both run
GENERIC_VS_LOOP = 10.0  # the julia generic route ≥ 10× faster than the per-sample loop
HESSIAN_VS_NESTED = 10.0  # the julia Hessian of a Flux model ≥ 10× faster than ForwardDiff over Zygote


def _gemm(meta, dtype) -> float:
    return max(meta["gemm_before"][dtype].values())


def _floor_seconds(row, meta) -> float:
    return row.N * row.P**2 / (_gemm(meta, row.dtype) * 1e9)


def _fmt_s(x) -> str:
    return "–" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _fastest_peer(rows):
    timed = [r for r in rows if r.peer and r.median is not None]
    return min(timed, key=lambda r: r.median) if timed else None


def _table(rows, meta) -> list[str]:
    flux = next((r for r in rows if r.library == "fluxhess"), rows[0])
    head = rows[0]
    out = [f"### {head.problem} · {head.quantity} · {head.dtype} (P = {head.P}, N = {head.N})", ""]
    if head.quantity in MATRICES:
        out.append(f"flop floor N·P² = {head.N * head.P**2 / 1e9:.1f} GFLOP → {_floor_seconds(head, meta):.3f} s "
                   f"at {_gemm(meta, head.dtype):.0f} GFLOP/s")
        out.append("")
    out += [f"| library | median s | runs | × {flux.library} time | GFLOP/s (floor flops) | % GEMM | peak MiB | peak / (result+data) | agrees with {flux.library} | note |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    ordered = sorted(rows, key=lambda r: (r is not flux, r.median is None, r.median or 0))
    for r in ordered:
        ratio = f"{r.median / flux.median:.2f}" if flux and flux.median and r.median else "–"
        if r.quantity in MATRICES and r.median:
            gf = r.N * r.P**2 / r.median / 1e9
            gflops, pct = f"{gf:.1f}", f"{100 * gf / _gemm(meta, r.dtype):.0f}"
        else:
            gflops = pct = "–"
        peak = f"{r.peak_bytes / 2**20:.0f}" if r.peak_bytes is not None else "–"
        rel = f"{r.peak_bytes / (r.result_bytes + r.data_bytes):.2f}" if r.peak_bytes is not None else "–"
        if r.residual is None:
            agree = "–" if r is flux or r.quantity.startswith("kron") else "?"
        else:
            agree = f"α={r.alpha:.3g}, resid {r.residual:.1e}"
        out.append(f"| {r.library} | {_fmt_s(r.median)} | {len(r.seconds)} | {ratio} | {gflops} | {pct} | {peak} | {rel} | {agree} | {r.note} |")
    return out + [""]


def _speedup_target(row) -> float:
    table = CNN_SPEEDUP_TARGETS if row.problem.startswith("cnn") else SPEEDUP_TARGETS
    return table.get(row.quantity, 1.0)


def _targets(rows, meta) -> list[str]:
    out = ["## Targets (issues 6, 13 and 24)", "", "| problem | quantity | target | measured | verdict |", "|---|---|---|---|---|"]

    def line(r, target, measured, ok, by=""):
        verdict = "met" if ok else f"MISSED{by}"
        out.append(f"| {r.problem} {r.dtype} | {r.quantity} | {target} | {measured} | {verdict} |")

    key = lambda r: (r.problem, r.dtype, r.quantity)  # noqa: E731
    for _, group in groupby(sorted(rows, key=key), key=key):
        group = list(group)
        timed = {r.library: r for r in group if r.median}
        julia = timed.get("fluxhess julia")
        if julia and "fluxhess" in timed:
            x = julia.median / timed["fluxhess"].median
            line(julia, f"julia backend within {JULIA_VS_JAX:g}× of the jax backend", f"{x:.2f}× its time",
                 x <= JULIA_VS_JAX, f" by {x / JULIA_VS_JAX:.2f}×")
        if julia and "julia per-sample loop" in timed:
            s = timed["julia per-sample loop"].median / julia.median
            line(julia, f"julia ≥ {GENERIC_VS_LOOP:g}× faster than its per-sample loop", f"{s:.2f}×",
                 s >= GENERIC_VS_LOOP, f" by {GENERIC_VS_LOOP / s:.2f}×")
        if julia and "julia ForwardDiff over Zygote" in timed:
            s = timed["julia ForwardDiff over Zygote"].median / julia.median
            line(julia, f"julia ≥ {HESSIAN_VS_NESTED:g}× faster than ForwardDiff over Zygote of the batch loss",
                 f"{s:.2f}×", s >= HESSIAN_VS_NESTED, f" by {HESSIAN_VS_NESTED / s:.2f}×")
        flux = timed.get("fluxhess")
        if flux is None:
            continue
        q = flux.quantity
        best = _fastest_peer(group)
        if q == "laplacian":
            for lib, need in (("folx", 1.0), ("jit(vmap(hessian))+trace", LAPLACIAN_VS_HESSIAN_TRACE)):
                other = next((r for r in group if r.library == lib and r.median), None)
                if other:
                    s = other.median / flux.median
                    line(flux, f"≥ {need:g}× faster than {lib}", f"{s:.2f}×", s >= need, f" by {need / s:.2f}×")
            continue
        need = _speedup_target(flux)
        if best:
            s = best.median / flux.median
            line(flux, f"≥ {need:g}× faster than the fastest peer ({best.library})", f"{s:.2f}×", s >= need,
                 f" by {need / s:.2f}×")
        if q in MATRICES:
            floor = _floor_seconds(flux, meta)
            x = flux.median / floor
            line(flux, f"within {FLOOR_FACTOR:g}× of the flop floor ({floor:.3f} s)", f"{x:.2f}× the floor",
                 x <= FLOOR_FACTOR, f" by {x / FLOOR_FACTOR:.2f}×")
            if flux.peak_bytes is not None:
                m = flux.peak_bytes / (flux.result_bytes + flux.data_bytes)
                line(flux, f"peak memory ≤ {MEMORY_FACTOR:g}× (result + data)", f"{m:.2f}×", m <= MEMORY_FACTOR,
                     f" by {m / MEMORY_FACTOR:.2f}×")
    return out + [""]


def render(rows, meta) -> str:
    g = {dt: {k: round(v) for k, v in r.items()} for dt, r in meta["gemm_before"].items()}
    ga = {dt: {k: round(v) for k, v in r.items()} for dt, r in meta["gemm_after"].items()}
    lines = [
        "# fluxhess benchmark",
        "",
        f"- started {meta['started']}, {meta['minutes']} min; {meta['machine']}; 1-min load average "
        f"{meta['load_min_max'][0]}–{meta['load_min_max'][1]} during the run",
        f"- GEMM GFLOP/s (2000², best of 5) at the start {g}, at the end {ga}; the best at the start is the rate used below",
        f"- medians of {meta['repeats']} interleaved timed runs after one warm-up call each (unless noted)",
        "- peak = rise of the process's peak resident memory during one call",
    ]
    if meta["not_installed"]:
        lines.append(f"- not installed (skipped): {meta['not_installed']}")
    lines.append("")
    lines += _targets(rows, meta)
    key = lambda r: (r.dtype, r.problem, r.quantity)  # noqa: E731
    for _, group in groupby(rows, key=key):
        lines += _table(list(group), meta)
    return "\n".join(lines)
