"""Stateless, differentiable neuron scans (pure functions of the state), (batch, time, *features).

    spikes, v = lif(x, alpha, threshold, v0)                          # LIF / IAF   (lif.py)
    v = leaky(x, alpha, v0)                                           # ExpLeak     (lif.py)
    spikes, v, w = adaptive_lif(x, alpha, threshold, rho, beta, gamma, zeta, eta, v0, w0,
                                weight_rec=None, a0=None)             # ALIF / adLIF, recurrent (adaptive.py)
    spikes, v = linear_lif(s, weight, bias, alpha, threshold, v0,
                           gradient="sparse")                         # fused Linear -> LIF  (linear.py)

Each fused op sits next to its plain-PyTorch reference (``*_ref``, from exodus.reference), the oracle
its tests compare against.
"""
from .adaptive import COUPLINGS, adaptive_lif, adaptive_lif_ref, adaptive_scan, adaptive_scan_backward
from .linear import LINEAR_GRADIENTS, linear_lif, linear_lif_ref
from .lif import (GRADIENTS, RESETS, _as_parameter, _check_choice, _check_number, _check_range, _check_threshold,
                  _check_v0, _max_spikes_code, check_input, leaky, leaky_ref, leaky_scan, leaky_scan_backward, lif,
                  lif_ref, lif_scan, lif_scan_backward)

__all__ = ["lif", "leaky", "adaptive_lif", "linear_lif", "lif_ref", "leaky_ref", "adaptive_lif_ref", "linear_lif_ref",
           "RESETS", "GRADIENTS", "LINEAR_GRADIENTS", "COUPLINGS", "check_input"]
