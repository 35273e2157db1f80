"""exodus — spiking-neuron layers with fused O(T) scans and exact (EXODUS) gradients."""
from . import functional, reference, surrogate
from .layers import IAF, LIF, ExpLeak

__version__ = "0.1.0"
__all__ = ["LIF", "IAF", "ExpLeak", "functional", "reference", "surrogate"]
