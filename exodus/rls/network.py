"""The E/I LIF network trained by RLS (DESIGN.md §9; Arthur et al. 2023, TrainSpikingNet.jl).

``NetworkParams`` holds every constant (defaults: TrainSpikingNet.jl's param.jl, N = 4096);
``build_network`` draws the fixed sparse graph, the plastic inputs and the stimuli from one
seeded generator. Units: time in ms, currents and voltages in units of threshold - reset.

Step convention: step t = 1 .. n_steps ends at time t dt. The stimulus is on for
stim_on < t dt < stim_off, the RLS updates happen before steps stim_off_steps + j learn_steps
(j = 1 .. n_learn), i.e. at times stim_off + j learn_every.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _steps(duration_ms: float, dt: float, name: str) -> int:
    steps = round(duration_ms / dt)
    if abs(steps * dt - duration_ms) > 1e-9 * max(1.0, abs(duration_ms)):
        raise ValueError(f"{name} = {duration_ms} ms is not a whole number of dt = {dt} ms steps")
    return steps


@dataclass
class NetworkParams:
    """Constants of the network, the trial and the learning rule (defaults: TrainSpikingNet.jl).

    n_cells: N neurons, the first floor(N exc_fraction) excitatory. Static graph: each neuron
    projects to 2K others (K = round(N_exc connection_prob) unless ``k`` is given), weights
    ∝ 1/√K (je = 2 τ_m g / √K; E→E 0.15 je, E→I je, I→E −0.75 je, I→I −je). Plastic inputs: L
    excitatory and L inhibitory presynaptic cells per neuron (L = round(2√K) unless
    ``n_plastic``), initial weights ±τ_m g / √L. External input X_bal = 0.08 √K g × (1.5 for E,
    1 for I); the stimulus (stim_on, stim_off) is an Ornstein–Uhlenbeck process per neuron.
    RLS: P(0) = (λI + μM)⁻¹ with λ = penalty_lambda, μ = penalty_mu, M_ij = 1 for same-type
    inputs. ``normalized_weight_step``: w ← w − e k/(1 + rᵀk) (classic RLS, default) or
    w ← w − e k (TrainSpikingNet.jl's newest code).
    """

    n_cells: int = 4096
    exc_fraction: float = 0.5
    connection_prob: float = 0.1
    k: Optional[int] = None
    n_plastic: Optional[int] = None
    dt: float = 0.1
    tau_mem: float = 10.0
    threshold: float = 1.0
    v_reset: float = 0.0
    refractory: float = 0.1
    tau_exc: float = 3.0
    tau_inh: float = 3.0
    tau_plastic: float = 150.0
    g: float = 1.0
    x_coefficient: float = 0.08
    x_exc_scale: float = 1.5
    x_inh_scale: float = 1.0
    stim_on: float = 800.0
    stim_off: float = 1000.0
    train_time: float = 2000.0
    stim_mu: float = 0.0
    stim_rate: float = 1.0 / 20.0
    stim_sigma: float = 0.2
    learn_every: float = 10.0
    penalty_lambda: float = 0.8
    penalty_mu: float = 0.01
    normalized_weight_step: bool = True
    seed: int = 1
    dtype: str = "float32"

    # ------------------------------------------------------------------ derived constants
    @property
    def n_exc(self) -> int:
        return math.floor(self.n_cells * self.exc_fraction)

    @property
    def n_inh(self) -> int:
        return self.n_cells - self.n_exc

    @property
    def K(self) -> int:
        return self.k if self.k is not None else round(self.n_exc * self.connection_prob)

    @property
    def L(self) -> int:
        return self.n_plastic if self.n_plastic is not None else round(2.0 * math.sqrt(self.K))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def n_steps(self) -> int:
        return _steps(self.train_time, self.dt, "train_time")

    @property
    def stim_on_steps(self) -> int:
        return _steps(self.stim_on, self.dt, "stim_on")

    @property
    def stim_off_steps(self) -> int:
        return _steps(self.stim_off, self.dt, "stim_off")

    @property
    def learn_steps(self) -> int:
        return _steps(self.learn_every, self.dt, "learn_every")

    @property
    def n_learn(self) -> int:
        """Number of RLS updates (and target samples) per trial."""
        return (self.n_steps - self.stim_off_steps) // self.learn_steps

    @property
    def refractory_steps(self) -> int:
        return round(self.refractory / self.dt)

    @property
    def static_weights(self) -> dict:
        """Static weights by (pre, post) type: je = 2 τ_m g / √K (DESIGN §9)."""
        je = 2.0 / math.sqrt(self.K) * self.tau_mem * self.g
        return {"ee": 0.15 * je, "ie": je, "ei": -0.75 * je, "ii": -je}  # key: pre, post

    @property
    def plastic_weight(self) -> float:
        """|initial plastic weight| = 2 τ_m g / (2√L)."""
        return 2.0 * self.tau_mem * self.g / (2.0 * math.sqrt(self.L))

    def validate(self) -> "NetworkParams":
        """Raise ValueError / TypeError naming the first bad field; returns self."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("k", "n_plastic"):
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise TypeError(f"{f.name} must be an int or None, got {value!r}")
            elif f.name == "normalized_weight_step":
                if not isinstance(value, bool):
                    raise TypeError(f"normalized_weight_step must be a bool, got {value!r}")
            elif f.name == "dtype":
                if value not in DTYPES:
                    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {value!r}")
            elif f.name in ("n_cells", "seed"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"{f.name} must be an int, got {value!r}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError(f"{f.name} must be a finite number, got {value!r}")
        positive = ("dt", "tau_mem", "tau_exc", "tau_inh", "tau_plastic", "learn_every", "train_time")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.penalty_lambda <= 0:
            raise ValueError(f"penalty_lambda (λ) must be > 0 (P(0) = (λI + μM)⁻¹), got {self.penalty_lambda}")
        if self.penalty_mu < 0:
            raise ValueError(f"penalty_mu (μ) must be >= 0, got {self.penalty_mu}")
        if self.threshold <= self.v_reset:
            raise ValueError(f"threshold ({self.threshold}) must exceed v_reset ({self.v_reset})")
        if self.refractory < 0 or self.stim_sigma < 0 or self.stim_rate < 0:
            raise ValueError("refractory, stim_sigma and stim_rate must be >= 0")
        if not 0 < self.exc_fraction < 1:
            raise ValueError(f"exc_fraction must be in (0, 1), got {self.exc_fraction}")
        if self.n_cells < 2 or self.n_exc < 1 or self.n_inh < 1:
            raise ValueError(f"n_cells = {self.n_cells} leaves no excitatory or no inhibitory cell")
        if self.K < 0 or 2 * self.K > self.n_cells - 1:
            raise ValueError(f"out-degree 2K = {2 * self.K} exceeds the n_cells - 1 = {self.n_cells - 1} candidates")
        if self.L < 1:
            raise ValueError(f"L (plastic inputs per type) must be >= 1, got {self.L}")
        if self.L > min(self.n_exc, self.n_inh):
            raise ValueError(f"L = {self.L} plastic inputs per type exceeds the number of candidates "
                             f"({self.n_exc} excitatory, {self.n_inh} inhibitory cells)")
        if not 0 <= self.stim_on < self.stim_off < self.train_time:
            raise ValueError("need 0 <= stim_on < stim_off < train_time")
        self.n_steps, self.stim_on_steps, self.stim_off_steps, self.learn_steps  # whole steps, or ValueError
        if self.n_learn < 1:
            raise ValueError("the learning window (stim_off, train_time] holds no learn_every interval")
        if self.K > 0 and self.n_cells * 2 * self.K >= 2**62:
            raise ValueError("network too large")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkParams":
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown NetworkParams fields: {sorted(unknown)}")
        return cls(**values).validate()


@dataclass
class Network:
    """The drawn network. N cells, n_in = 2L plastic inputs per cell, nnz = 2K N static synapses.

    static_ptr (N+1) int64, static_post (nnz) int32, static_weight (nnz): outgoing static synapses
    by presynaptic cell (CSR). plastic_inputs (N, 2L) int64: presynaptic cells of each cell's
    plastic weights, L excitatory then L inhibitory. plastic_ptr (N+1), plastic_post (N 2L) int32,
    plastic_slot (N 2L) int64: the same synapses by presynaptic cell, slot = post 2L + s indexes
    the flattened (N, 2L) weight matrix (the simulation reads the trained weights in place).
    w0 (N, 2L): initial plastic weights. x_bal (N): constant input; x_stim (tasks, rows, N).
    """

    params: NetworkParams
    static_ptr: torch.Tensor
    static_post: torch.Tensor
    static_weight: torch.Tensor
    plastic_inputs: torch.Tensor
    plastic_ptr: torch.Tensor
    plastic_post: torch.Tensor
    plastic_slot: torch.Tensor
    w0: torch.Tensor
    x_bal: torch.Tensor
    x_stim: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.params.n_cells

    @property
    def n_inputs(self) -> int:
        return 2 * self.params.L

    @property
    def n_tasks(self) -> int:
        return self.x_stim.shape[0]

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device) -> "Network":
        return Network(self.params, **{k: v.to(device) for k, v in self.tensors().items()}, extra=dict(self.extra))


def check_network(net: Network) -> None:
    """Raise ValueError unless the index arrays are consistent, in range and every presynaptic
    cell's postsynaptic cells are distinct (the compiled loop vectorises the scatter-adds of
    one spike on that guarantee and indexes memory with these arrays). Run once per Network
    (the result is cached in net.extra)."""
    if net.extra.get("checked"):
        return
    p = net.params
    n, n_in = p.n_cells, 2 * p.L
    dtype = p.torch_dtype
    expected = {"static_ptr": ((n + 1,), torch.int64), "plastic_inputs": ((n, n_in), torch.int64),
                "plastic_ptr": ((n + 1,), torch.int64), "plastic_post": ((n * n_in,), torch.int32),
                "plastic_slot": ((n * n_in,), torch.int64), "w0": ((n, n_in), dtype), "x_bal": ((n,), dtype)}
    for name, (shape, kind) in expected.items():
        t = getattr(net, name)
        if tuple(t.shape) != shape or t.dtype != kind:
            raise ValueError(f"network.{name} must be {kind} of shape {shape}, got {t.dtype} {tuple(t.shape)}")
    if net.x_stim.dim() != 3 or net.x_stim.shape[1:] != (p.stim_off_steps - p.stim_on_steps, n) \
            or net.x_stim.dtype != dtype:
        raise ValueError(f"network.x_stim must be {dtype} (tasks, {p.stim_off_steps - p.stim_on_steps}, {n})")
    nnz = net.static_post.numel()
    if net.static_post.dtype != torch.int32 or net.static_weight.shape != (nnz,) or net.static_weight.dtype != dtype:
        raise ValueError("network.static_post must be int32 and static_weight of the same length in the network dtype")
    for name, ptr, total in (("static", net.static_ptr, nnz), ("plastic", net.plastic_ptr, n * n_in)):
        if int(ptr[0]) != 0 or int(ptr[-1]) != total or bool((ptr[1:] < ptr[:-1]).any()):
            raise ValueError(f"network.{name}_ptr must rise from 0 to {total}")
    if nnz and (int(net.static_post.min()) < 0 or int(net.static_post.max()) >= n):
        raise ValueError("network.static_post indexes outside the network")
    if int(net.plastic_inputs.min()) < 0 or int(net.plastic_inputs.max()) >= n:
        raise ValueError("network.plastic_inputs indexes outside the network")
    ptr, post, slot = plastic_out_lists(net.plastic_inputs.cpu(), n)
    if not (torch.equal(ptr, net.plastic_ptr.cpu()) and torch.equal(post, net.plastic_post.cpu())
            and torch.equal(slot, net.plastic_slot.cpu())):
        raise ValueError("network.plastic_ptr/post/slot do not match plastic_inputs (use plastic_out_lists)")
    rows = torch.repeat_interleave(torch.arange(n), net.static_ptr[1:].cpu() - net.static_ptr[:-1].cpu())
    key = rows * n + net.static_post.cpu().long()
    if torch.unique(key).numel() != nnz:
        raise ValueError("a presynaptic cell lists a postsynaptic cell twice in the static graph")
    pre_post = net.plastic_inputs.cpu() + n * torch.arange(n).unsqueeze(1)
    if torch.unique(pre_post).numel() != n * n_in:
        raise ValueError("a cell lists a presynaptic cell twice among its plastic inputs")
    net.extra["checked"] = True


def _sample_without_replacement(rows: int, population: int, count: int, generator: torch.Generator,
                                chunk: int = 256) -> torch.Tensor:
    """(rows, count) int64: for each row ``count`` distinct values of range(population), ascending
    (the ``count`` smallest of ``population`` uniform keys per row)."""
    out = torch.empty(rows, count, dtype=torch.int64)
    if count == 0:
        return out
    for begin in range(0, rows, chunk):
        end = min(rows, begin + chunk)
        keys = torch.rand(end - begin, population, generator=generator, dtype=torch.float64)
        out[begin:end] = torch.topk(keys, count, dim=1, largest=False, sorted=False).indices.sort(dim=1).values
    return out


def ornstein_uhlenbeck(rows: int, n_cells: int, dt: float, mu: float, rate: float, sigma: float,
                       generator: torch.Generator) -> torch.Tensor:
    """(rows, N) float64 OU processes from 0: s[m+1] = s[m] + rate (mu - s[m]) dt + sigma √dt ξ."""
    noise = torch.randn(rows, n_cells, generator=generator, dtype=torch.float64) * (sigma * math.sqrt(dt))
    out = torch.zeros(rows, n_cells, dtype=torch.float64)
    for m in range(rows - 1):
        out[m + 1] = out[m] + rate * (mu - out[m]) * dt + noise[m]
    return out


def plastic_out_lists(plastic_inputs: torch.Tensor, n_cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outgoing view of the plastic synapses: (ptr (N+1), post (N 2L) int32, slot (N 2L) int64),
    sorted by presynaptic cell, then by postsynaptic cell."""
    n_in = plastic_inputs.shape[1]
    pre = plastic_inputs.reshape(-1)
    order = torch.argsort(pre, stable=True)  # slots are ascending in post within a presynaptic cell
    counts = torch.bincount(pre, minlength=n_cells)
    ptr = torch.zeros(n_cells + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr, (order // n_in).to(torch.int32), order.to(torch.int64)


def build_network(params: NetworkParams, n_tasks: int = 1, generator: Optional[torch.Generator] = None) -> Network:
    """Draw the static graph, the plastic inputs and ``n_tasks`` stimuli from ``generator``
    (default: torch.Generator seeded with params.seed). Returns CPU tensors (Network.to moves them)."""
    params.validate()
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(params.seed)
    dtype = params.torch_dtype
    n, n_exc, K, L = params.n_cells, params.n_exc, params.K, params.L

    # static graph: 2K distinct postsynaptic cells per presynaptic cell, no autapse (DESIGN §9)
    post = _sample_without_replacement(n, n - 1, 2 * K, gen)
    post = post + (post >= torch.arange(n).unsqueeze(1)).to(torch.int64)  # skip the cell itself
    pre_exc = (torch.arange(n) < n_exc).unsqueeze(1)
    post_exc = post < n_exc
    w = params.static_weights
    weight = torch.where(pre_exc, torch.where(post_exc, w["ee"], w["ie"]), torch.where(post_exc, w["ei"], w["ii"]))
    static_ptr = torch.arange(n + 1, dtype=torch.int64) * (2 * K)

    # plastic inputs: L excitatory and L inhibitory presynaptic cells per neuron
    exc_inputs = _sample_without_replacement(n, n_exc, L, gen)
    inh_inputs = _sample_without_replacement(n, params.n_inh, L, gen) + n_exc
    plastic_inputs = torch.cat([exc_inputs, inh_inputs], dim=1).contiguous()
    plastic_ptr, plastic_post, plastic_slot = plastic_out_lists(plastic_inputs, n)
    wp = params.plastic_weight
    w0 = torch.cat([torch.full((n, L), wp, dtype=torch.float64), torch.full((n, L), -wp, dtype=torch.float64)], 1)

    jx = params.x_coefficient * math.sqrt(K) * params.g
    x_bal = torch.where(torch.arange(n) < n_exc, jx * params.x_exc_scale, jx * params.x_inh_scale)
    rows = params.stim_off_steps - params.stim_on_steps
    x_stim = torch.stack([ornstein_uhlenbeck(rows, n, params.dt, params.stim_mu, params.stim_rate,
                                             params.stim_sigma, gen) for _ in range(n_tasks)])
    net = Network(params=params, static_ptr=static_ptr, static_post=post.reshape(-1).to(torch.int32),
                  static_weight=weight.reshape(-1).to(dtype), plastic_inputs=plastic_inputs,
                  plastic_ptr=plastic_ptr, plastic_post=plastic_post, plastic_slot=plastic_slot,
                  w0=w0.to(dtype), x_bal=x_bal.to(torch.float64).to(dtype), x_stim=x_stim.to(dtype).contiguous())
    net.extra["checked"] = True  # distinct by construction, in range
    return net


def input_types(params: NetworkParams) -> torch.Tensor:
    """(2L,) bool: True for the excitatory plastic inputs (the first L)."""
    return torch.arange(2 * params.L) < params.L


def initial_P(params: NetworkParams) -> torch.Tensor:
    """(2L, 2L) float64 P(0) = (λI + μM)⁻¹, M_ij = 1 for inputs of the same type (DESIGN §9).
    Every neuron has L excitatory then L inhibitory inputs, so every neuron starts from this P."""
    exc = input_types(params)
    same = (exc.unsqueeze(0) == exc.unsqueeze(1)).to(torch.float64)
    p_inv = params.penalty_lambda * torch.eye(2 * params.L, dtype=torch.float64) + params.penalty_mu * same
    P = torch.linalg.inv(p_inv)
    return 0.5 * (P + P.T)  # exactly symmetric (the LU inverse is only to rounding)


@dataclass
class SimState:
    """Dynamic state of one trial, all (N,): v membrane; u_exc, u_inh static and u_plastic plastic
    currents; r filtered spike trains (τ_plastic); in_* charges received in the last step (to be
    filtered in the next); u_static = u_exc + u_inh of the last step; spiked (uint8) spikes of the
    last step; refractory (int32) steps left; spike_count (int64)."""

    v: torch.Tensor
    u_exc: torch.Tensor
    u_inh: torch.Tensor
    u_plastic: torch.Tensor
    r: torch.Tensor
    in_exc: torch.Tensor
    in_inh: torch.Tensor
    in_plastic: torch.Tensor
    u_static: torch.Tensor
    spiked: torch.Tensor
    refractory: torch.Tensor
    spike_count: torch.Tensor

    def clone(self) -> "SimState":
        return SimState(**{f.name: getattr(self, f.name).clone() for f in fields(self)})


def new_state(params: NetworkParams, generator: torch.Generator, device="cpu") -> SimState:
    """Start of a trial: v ~ N(0, 1) (threshold - reset) + reset (as TrainSpikingNet.jl), everything else 0."""
    n, dtype = params.n_cells, params.torch_dtype
    v = torch.randn(n, generator=generator, dtype=torch.float64) * (params.threshold - params.v_reset) + params.v_reset

    def zeros():
        return torch.zeros(n, dtype=dtype, device=device)

    return SimState(v=v.to(dtype).to(device), u_exc=zeros(), u_inh=zeros(), u_plastic=zeros(), r=zeros(),
                    in_exc=zeros(), in_inh=zeros(), in_plastic=zeros(), u_static=zeros(),
                    spiked=torch.zeros(n, dtype=torch.uint8, device=device),
                    refractory=torch.zeros(n, dtype=torch.int32, device=device),
                    spike_count=torch.zeros(n, dtype=torch.int64, device=device))
