"""Laplace on real data: scikit-learn's handwritten digits (1,797 images of 8×8 pixels, 10 classes).

An MLP [64, 50, 10] (tanh) and a Laplace approximation with the full GGN, over the last
layer and over all weights, with two honest ways to choose the prior precision — neither
looks at the test set:

1. **Marginal likelihood.** :func:`fluxhess.marglik_training` alternates MAP training
   (:func:`fluxhess.fit_map`) at prior precision λ with the λ that maximises the Laplace
   marginal likelihood of all weights, until they agree (Immer et al. 2021), so the
   network is trained with the prior its evidence picks. The last-layer Laplace at that
   MAP tunes its own λ by marginal likelihood.
2. **Post hoc.** The usual recipe: a MAP at a fixed prior precision (``--map-prior``),
   then each Laplace variant tunes its prior by marginal likelihood at that MAP.
3. **Validation.** A fifth of the training set is held out; the MAP is trained on the
   rest (λ = ``--map-prior``) and each Laplace variant takes the λ from a grid that
   minimises the validation NLL (``optimize_prior_precision(method="gridsearch")``).

Held-out accuracy, negative log likelihood, expected calibration error and Brier score
are printed for each MAP and each Laplace variant (GLM predictive; probit, Monte Carlo and
bridge links), with the prior precision used.

Run: ``python examples/digits_laplace.py`` (needs ``pip install scikit-learn``; the data
ship inside the package, nothing is downloaded). Takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fluxhess as fh


def load_digits(seed: int = 0, test_fraction: float = 0.2):
    """Pixels scaled to [0, 1] ``(N, 64)`` and labels ``(N,)``, split at random into train and test."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    X, y = data.data / 16.0, data.target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def metrics(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, mean confidence (top probability), NLL (mean), ECE (``n_bins`` equal-width
    confidence bins) and Brier score (mean)."""
    N = len(y)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == y
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.sum(bins == b) / N
              for b in range(n_bins) if np.any(bins == b))
    onehot = np.eye(probs.shape[1])[y]
    return {
        "accuracy": float(correct.mean()),
        "confidence": float(confidence.mean()),
        "nll": float(-np.mean(np.log(np.clip(probs[np.arange(N), y], 1e-300, None)))),
        "ece": float(ece),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
    }


def laplace_rows(la, X_test, y_test, name: str, links=("probit", "mc", "bridge")) -> dict[str, tuple[str, dict]]:
    """``{row name: (prior precision, metrics)}`` of the GLM predictive with each link."""
    prior = "/".join(f"{p:.3g}" for p in la.prior_precision)
    return {f"{name}, GLM {link}": (prior, metrics(la.predictive(X_test, pred_type="glm", link_approx=link, n_samples=1000).mean, y_test))
            for link in links}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="auto (default), jax or julia")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--map-prior", type=float, default=0.01,
                        help="prior precision the marginal-likelihood training starts from, and that of the post-hoc and validation MAPs")
    args = parser.parse_args(argv)

    X, y, X_test, y_test = load_digits(args.seed)
    model = fh.Chain.mlp([64, 50, 10], "tanh")
    print(f"digits: {len(y)} train, {len(y_test)} test; model {model} (P = {model.num_params})")
    train = dict(max_iter=3000, gtol=1e-4, backend=args.backend)
    rows: dict[str, tuple[str, dict]] = {}

    # 1. the MAP and its prior from the marginal likelihood, alternating until they agree
    t = time.perf_counter()
    res = fh.marglik_training(model, model.init(args.seed), X, y, "classification", structure="full", prior_structure="scalar",
                              prior_precision=args.map_prior, rounds=6, rtol=0.05, **train)
    print(f"marginal-likelihood training ({time.perf_counter() - t:.0f} s, converged {res.converged}):")
    for k, r in enumerate(res.history, 1):
        print(f"  round {k}: MAP at λ = {r.map_prior_precision[0]:.4g} ({r.map_iterations} L-BFGS iterations) -> "
              f"marginal likelihood picks λ = {r.prior_precision[0]:.4g} (log marglik {r.log_marginal_likelihood:.2f})")
    theta = res.map_fit.params
    rows["MAP (marglik-trained)"] = (f"{res.history[-1].map_prior_precision[0]:.3g}",
                                     metrics(_softmax(fh.forward(model, theta, X_test, backend=args.backend)), y_test))
    last = fh.Laplace(model, theta, "classification", curvature="ggn", structure="full", subset="last_layer",
                      backend=args.backend).fit(X, y).optimize_prior_precision(method="marglik")
    rows.update(laplace_rows(last, X_test, y_test, "LA last layer, marglik"))
    rows.update(laplace_rows(res.laplace, X_test, y_test, "LA all, marglik"))

    # 2. post hoc, the usual recipe: a MAP at a fixed prior (λ = --map-prior), then each
    #    Laplace variant picks its prior by marginal likelihood at that MAP
    fit = fh.fit_map(model, model.init(args.seed), X, y, loss="logitcrossentropy", prior_precision=args.map_prior, **train)
    rows["MAP (fixed prior)"] = (f"{args.map_prior:.3g}", metrics(_softmax(fh.forward(model, fit.params, X_test, backend=args.backend)), y_test))
    for subset, name in (("last_layer", "last layer"), ("all", "all")):
        la = fh.Laplace(model, fit.params, "classification", curvature="ggn", structure="full", subset=subset,
                        prior_precision=args.map_prior, backend=args.backend).fit(X, y)
        rows.update(laplace_rows(la.optimize_prior_precision(method="marglik"), X_test, y_test, f"LA {name}, post-hoc marglik"))

    # 3. a validation split of the training set: the Laplace prior minimises the validation NLL
    t = time.perf_counter()
    order = np.random.default_rng(args.seed + 1).permutation(len(y))
    n_val = len(y) // 5
    (X_val, y_val), (X_fit, y_fit) = (X[order[:n_val]], y[order[:n_val]]), (X[order[n_val:]], y[order[n_val:]])
    fit = fh.fit_map(model, model.init(args.seed), X_fit, y_fit, loss="logitcrossentropy", prior_precision=args.map_prior, **train)
    rows["MAP (80% of train)"] = (f"{args.map_prior:.3g}", metrics(_softmax(fh.forward(model, fit.params, X_test, backend=args.backend)), y_test))
    for subset, name in (("last_layer", "last layer"), ("all", "all")):
        la = fh.Laplace(model, fit.params, "classification", curvature="ggn", structure="full", subset=subset,
                        backend=args.backend).fit(X_fit, y_fit)
        la.optimize_prior_precision(method="gridsearch", val=(X_val, y_val))
        rows.update(laplace_rows(la, X_test, y_test, f"LA {name}, validation grid", links=("probit",)))
    print(f"validation variant: {len(y_fit)} training and {n_val} validation points ({time.perf_counter() - t:.0f} s)")

    print()
    print(f"| {'method':<42} | prior λ | accuracy | confidence |    NLL |    ECE |  Brier |")
    print(f"|{'-' * 44}|--------:|---------:|-----------:|-------:|-------:|-------:|")
    for name, (prior, m) in rows.items():
        print(f"| {name:<42} | {prior:>7} | {m['accuracy']:8.4f} | {m['confidence']:10.4f} | {m['nll']:6.4f} | "
              f"{m['ece']:6.4f} | {m['brier']:6.4f} |")
    return 0


def _softmax(f: np.ndarray) -> np.ndarray:
    e = np.exp(f - f.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    raise SystemExit(main())
