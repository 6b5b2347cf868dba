"""The problem that tests/test_sharded.py and its child processes share: P = 68, divisible by 4."""

import numpy as np

import fluxhess as fh

MODEL = fh.Chain.mlp([3, 5, 5, 3], "tanh")  # P = 20 + 30 + 18 = 68: divisible by 2 and 4 devices
QUANTITIES = ("hessian", "ggn", "empirical_fisher")
UNEVEN = fh.Chain.mlp([2, 3, 1], "tanh")  # P = 13: no even split over 2 or 4 devices


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = MODEL.init(seed) + 0.1 * rng.normal(size=MODEL.num_params)
    X = rng.normal(size=(11, MODEL.in_features))
    y = rng.integers(0, MODEL.out_features, size=11)
    return theta, X, y
