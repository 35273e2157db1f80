"""exodus.rls — recursive-least-squares (FORCE) training of spiking E/I networks (DESIGN.md §9),
after Arthur et al. 2023 (TrainSpikingNet.jl): a static sparse E/I LIF graph with plastic inputs
whose weights are trained, batched over neurons, so each neuron's synaptic current follows a
target. See docs/rls.md.

    import exodus.rls as rls
    trainer, spont = rls.setup(rls.NetworkParams(n_cells=1024, dtype="float64"))
    trainer.train(100, progress=True)          # history: rate (Hz), correlation, seconds per loop
"""
from .network import Network, NetworkParams, SimState, build_network, initial_P, new_state
from .targets import rates_to_currents, ricciardi_rate, ricciardi_sigma, sinusoid_targets
from .train import (LoopStats, RLSTrainer, SpontaneousStats, correlation, pack_symmetric, rls_update_native,
                    rls_update_torch, setup, spontaneous_activity, unpack_symmetric)

__all__ = ["Network", "NetworkParams", "SimState", "build_network", "initial_P", "new_state", "rates_to_currents",
           "ricciardi_rate", "ricciardi_sigma", "sinusoid_targets", "LoopStats", "RLSTrainer", "SpontaneousStats",
           "correlation", "pack_symmetric", "unpack_symmetric", "rls_update_native", "rls_update_torch", "setup",
           "spontaneous_activity"]
