"""exodus — spiking-neuron layers with fused O(T) scans and exact (EXODUS) gradients."""
from . import functional, reference, surrogate
from .layers import ALIF, IAF, LIF, AdaptiveLIF, AdLIF, ExpLeak, LinearLIF

__version__ = "0.1.0"
__all__ = ["LIF", "IAF", "ExpLeak", "AdaptiveLIF", "ALIF", "AdLIF", "LinearLIF", "functional", "reference", "surrogate"]
