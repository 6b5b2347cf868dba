"""Last-layer Laplace on LeNet-5 at MNIST size: fluxhess against laplace-torch on the same weights.

LeNet-5 (``Conv2d(1, 6, 5, padding=2)``, tanh, max-pool 2, ``Conv2d(6, 16, 5)``, tanh, max-pool 2,
``Linear(400, 120)``, tanh, ``Linear(120, 84)``, tanh, ``Linear(84, 10)``) on N = 10,000 images
28×28, float64, random weights (PyTorch's initialisation, seed 0), images and labels; the
classification likelihood, ``subset="last_layer"`` (the 850 parameters of the last Linear),
``structure="full"``. laplace-torch runs with its BackPACK GGN backend (the exact GGN), its
data in one DataLoader of ``--batch`` samples per batch; fluxhess takes the model through
``fluxhess.from_torch``.

Printed: the seconds of ``fit`` and of the probit predictive on ``--test`` points for each
(medians of ``--repeats`` interleaved rounds after one warm-up call each), and the largest
relative differences of the posterior precision (in torch's parameter order), the log
marginal likelihood and the predictive probabilities. Installs nothing; needs torch,
laplace-torch and BackPACK. Run: ``python benchmarks/lenet_laplace.py [--n 10000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fluxhess as fh

PRIOR_PRECISION = 0.7


def lenet5():
    import torch

    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),
    ).double().eval()


def torch_order(model: fh.Chain, names: list[str]) -> np.ndarray:
    """Positions (within the subset) of torch's parameter vector: row-major W (out, in), then b."""
    index = model.unflatten(np.arange(model.num_params, dtype=float))
    flat = np.concatenate([index[n].ravel(order="C") for n in names]).astype(int)
    return flat - min(model.layout[n].offset for n in names)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="training images (default 10,000)")
    parser.add_argument("--test", type=int, default=1000, help="points of the predictive (default 1,000)")
    parser.add_argument("--batch", type=int, default=1000, help="laplace-torch's DataLoader batch size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from laplace import Laplace
    from laplace.curvature import BackPackGGN

    net = lenet5()
    model, theta = fh.from_torch(net, input_shape=(1, 28, 28))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(args.n, 1, 28, 28)), rng.integers(0, 10, args.n)
    Xt = rng.normal(size=(args.test, 1, 28, 28))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=args.batch
    )

    def ours_fit():
        return fh.Laplace(model, theta, "classification", subset="last_layer", structure="full",
                          prior_precision=PRIOR_PRECISION, backend="jax").fit(X, y)

    def theirs_fit():
        la = Laplace(net, "classification", subset_of_weights="last_layer", hessian_structure="full",
                     backend=BackPackGGN, prior_precision=PRIOR_PRECISION)
        la.fit(loader)
        return la

    ours, theirs = ours_fit(), theirs_fit()  # warm-up (JAX compiles here)
    Xt_torch = torch.tensor(Xt)
    calls = {
        ("fluxhess", "fit"): ours_fit,
        ("laplace-torch", "fit"): theirs_fit,
        ("fluxhess", "predictive"): lambda: ours.predictive(Xt).mean,
        ("laplace-torch", "predictive"): lambda: theirs(Xt_torch, pred_type="glm", link_approx="probit").numpy(),
    }
    for fn in calls.values():
        fn()
    seconds: dict = {key: [] for key in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            seconds[key].append(time.perf_counter() - start)

    order = torch_order(model, ours.subset)
    P_ours = ours.posterior_precision[np.ix_(order, order)]
    P_theirs = theirs.posterior_precision.numpy()
    lml_ours, lml_theirs = float(ours.log_marginal_likelihood()), float(theirs.log_marginal_likelihood())
    pred_ours, pred_theirs = calls["fluxhess", "predictive"](), calls["laplace-torch", "predictive"]()

    print(f"LeNet-5 28×28, N = {args.n}, last layer ({ours.subset}, {len(order)} parameters), float64, "
          f"{args.test} test points; medians of {args.repeats} interleaved rounds")
    print("| step | fluxhess s | laplace-torch (BackPACK GGN) s | ratio |")
    print("|---|---|---|---|")
    for step in ("fit", "predictive"):
        a, b = statistics.median(seconds["fluxhess", step]), statistics.median(seconds["laplace-torch", step])
        print(f"| {step} | {a:.3f} | {b:.3f} | {b / a:.2f}× |")
    print(f"posterior precision: max relative difference {_rel(P_ours, P_theirs):.1e}")
    print(f"log marginal likelihood: {lml_ours:.10g} vs {lml_theirs:.10g} (relative {abs(lml_ours - lml_theirs) / abs(lml_theirs):.1e})")
    print(f"predictive (probit): max relative difference {_rel(pred_ours, pred_theirs):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
