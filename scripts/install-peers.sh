#!/usr/bin/env bash
# `make peers`: installs the peer libraries that fluxhess's converter, parity tests and
# benchmarks compare against, into the Python environment of $PYTHON (default: python;
# `make peers` passes the repository's .venv):
#   CPU PyTorch 2.13.0, laplace-torch, curvlinops, BackPACK, ASDL, Flax, laplax, folx.
# torch: a torch 2.13.0 wheel at hand (already installed, or in a local wheelhouse named by
# PIP_FIND_LINKS) is used without going online; otherwise the CPU build from the PyTorch CPU
# index (PyPI's Linux wheel is a multi-GB CUDA build).
# laplace-torch and BackPACK declare torchvision, whose PyPI wheels would replace the CPU
# torch with a CUDA build; none of these libraries needs torchvision for dense models, so
# they are installed without their declared dependencies, and the light ones added by hand.
set -euo pipefail
PY=${PYTHON:-python}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
pip() { "$PY" -m pip "$@"; }

# --no-index finds the wheel at hand but not torch's own dependencies: install torch alone
# from it first, then let pip add the dependencies (torch itself is then already satisfied).
if pip install --quiet --no-index --no-deps "torch==${TORCH_VERSION}" 2>/dev/null; then
    echo "torch ${TORCH_VERSION}: the wheel at hand"
    pip install --quiet "torch==${TORCH_VERSION}"
else
    echo "torch ${TORCH_VERSION}: from the PyTorch CPU index"
    pip install --quiet "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
fi
pip install --quiet --upgrade --no-deps laplace-torch backpack-for-pytorch curvlinops-for-pytorch asdfghjkl
pip install --quiet --upgrade einops unfoldNd einconv linear_operator opt-einsum torchmetrics tqdm scipy flax laplax folx
"$PY" - <<'PY'
import torch, laplace, curvlinops, backpack, asdl, folx, flax, laplax
from laplace.curvature import AsdlHessian, BackPackGGN, CurvlinopsGGN
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the peers need the CPU one"
print("peers ready: torch", torch.__version__, "laplace-torch", getattr(laplace, "__version__", "?"),
      "curvlinops", getattr(curvlinops, "__version__", "?"), "flax", flax.__version__)
PY
