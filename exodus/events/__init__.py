"""exodus.events — exact event-based simulation and training of sparse pulse-coupled networks
(SparseProp, Engelken 2023; DESIGN.md §8). See docs/events.md.

    import exodus.events as ev
    net = ev.Network(n=100_000, k=100)               # balanced inhibitory LIF network, tau = 10 ms
    spikes = ev.simulate(net, n_spikes=1_000_000)    # compiled priority queue: O(K) per spike, amortised
    spikes.times, spikes.neurons, spikes.mean_rate() # seconds, ids, Hz
"""
from .adjoint import final_phases, isi_rates, phase_rates, replay, spike_time_jvp, spike_time_vjp, spike_times
from .eif import EIFParams, EIFTable, eif_table
from .network import MODELS, Network, Spikes, simulate
from .reference import random_targets, simulate_reference, uniform_phases

__all__ = ["final_phases", "isi_rates", "phase_rates", "replay", "spike_time_jvp", "spike_time_vjp", "spike_times", "EIFParams", "EIFTable", "eif_table", "MODELS", "Network", "Spikes", "simulate", "random_targets", "simulate_reference", "uniform_phases"]
