"""Model adapters: the FlowModelAdapter protocol and the embedded digits model.

``from elbo_kernels.models import digits`` gives the DigitEval default
(:mod:`elbo_kernels.models.digits`); it is imported on first use so that
importing this package stays cheap.
"""

from .base import Conditioning, FlowModelAdapter

__all__ = ["Conditioning", "FlowModelAdapter", "digits"]


def __getattr__(name):
    if name == "digits":
        import importlib

        return importlib.import_module(".digits", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
