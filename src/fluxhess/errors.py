"""The exceptions fluxhess raises, and its warnings: one root each, one subclass per kind of problem."""


class FluxHessError(Exception):
    """Root of every error fluxhess raises on purpose."""


class InputError(FluxHessError, ValueError):
    """An argument has the wrong shape, dtype, range or value.

    The message names the argument, what was expected and what arrived.
    """


class UnknownNameError(InputError):
    """A loss, kind, backend, activation or dtype name that fluxhess does not know."""


class BackendUnavailableError(FluxHessError, RuntimeError):
    """The requested backend cannot run here; the message says why and how to fix it."""


class JuliaUnavailableError(BackendUnavailableError):
    """No usable Julia runtime: none installed, or it failed to start.

    Raised at once, never after a download or a hang.
    """


class UnsupportedModelError(FluxHessError, TypeError):
    """The model contains something the chosen backend or quantity cannot handle."""


class MemoryBudgetError(FluxHessError, MemoryError):
    """The result (or its working memory) would not fit in the memory available.

    Raised before anything is allocated; the message names the size and cheaper
    alternatives such as ``diagonal``, ``kron`` or ``hvp``.
    """


class BackendError(FluxHessError, RuntimeError):
    """A backend failed while computing a quantity (e.g. a Julia exception).

    The message carries the backend's own message, the quantity and the shapes.
    """


class FluxHessWarning(UserWarning):
    """Root of every warning fluxhess issues: a result was computed, but something about it
    (or about the call) deserves a look. The message says what and the usual fix."""


class NumericalWarning(FluxHessWarning):
    """A result was computed, but rounding has cost it significant digits.

    The message says how much was measured, the bound it exceeded, and the fix
    (usually ``dtype="float64"``).
    """


class ConvergenceWarning(FluxHessWarning, RuntimeWarning):
    """An optimiser (``fit_map``, ``optimize_prior_precision``, ``marglik_training``) stopped
    before converging; its result is stored or returned all the same."""


class NotFittedError(FluxHessError, RuntimeError):
    """A method needs a fitted object (e.g. ``Laplace.predictive`` before ``.fit``)."""
