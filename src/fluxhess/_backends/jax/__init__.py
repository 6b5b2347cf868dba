"""The JAX backend (:class:`JaxBackend`), one module per job:

- :mod:`.backend` — the backend: each method picks a route for its quantity;
- :mod:`.kinds` — the curvature kinds (Hessian, GGN, empirical Fisher) and their per-sample pieces;
- :mod:`.curvature`, :mod:`.diagonal`, :mod:`.kron` — the P×P matrices and products, their
  diagonals, KFAC: a structured route for Dense chains and a generic one each;
- :mod:`.inputs` — derivatives in the inputs (Jacobians, Hessians, Laplacians, divergences);
- :mod:`.model` — a :class:`fluxhess.Chain` as a JAX function of ``(θ, x)``;
- :mod:`.compiled` — the per-sample pieces of any Chain and the bounded cache of jitted routes;
- :mod:`.chunked` — the generic routes' loops over chunks of samples and of parameters;
- :mod:`.dense` — a Dense chain's structure and per-sample factors;
- :mod:`.dense_matrix` — a Dense chain's P×P matrix block by block on the host (NumPy GEMMs);
- :mod:`.dense_device`, :mod:`.sharded` — P×P matrices assembled by XLA on JAX devices;
- :mod:`.precision` — the float width and matmul precision every route runs in.

All of it is internal; the public door is :mod:`fluxhess`.
"""

from . import sharded
from .backend import JaxBackend

__all__ = ["JaxBackend", "sharded"]
