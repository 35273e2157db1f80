"""exodus — spiking-neuron layers with fused O(T) scans and exact (EXODUS) gradients."""
from . import functional, reference, surrogate
from .layers import ALIF, IAF, LIF, AdaptiveLIF, AdLIF, ExpLeak, LinearLIF
from . import online  # noqa: E402  (after layers: to_online builds LinearLIF blocks)

__version__ = "0.1.0"
__all__ = ["LIF", "IAF", "ExpLeak", "AdaptiveLIF", "ALIF", "AdLIF", "LinearLIF", "functional", "online", "reference",
           "surrogate"]
