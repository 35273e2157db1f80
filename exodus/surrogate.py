"""Surrogate derivatives sigma(h; theta) = da/dh for the backward pass (DESIGN.md §1).

The kernel-side formula of each surrogate lives in ``cuda/surrogates.cuh``; the
``derivative`` method here is its plain-PyTorch twin, used only by the reference
(the oracle). ``kind`` and ``params()`` are what the kernels receive.

In the backward pass  da/dh := sigma(h; theta)  and  da/dtheta := -sigma(h; theta).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Surrogate", "SingleExponential", "PeriodicExponential", "Heaviside", "Gaussian",
    "FastSigmoid", "SuperSpike", "ATan", "Truncated",
]


class Surrogate:
    """Base class. ``kind`` matches ``SurrogateKind`` in cuda/common.cuh."""

    kind: int = -1

    def params(self) -> tuple[float, float, float]:
        raise NotImplementedError

    #: Truncation band (Truncated): sigma = 0 where |h - theta| >= band * theta; 0 = no truncation.
    band: float = 0.0

    def kernel_params(self) -> tuple[float, float, float, float]:
        """(p0, p1, p2, band): what the kernels receive (cuda/surrogates.cuh, banded_sigma)."""
        return (*self.params(), float(self.band))

    def derivative(self, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """sigma(h; theta), elementwise; h and theta broadcast."""
        raise NotImplementedError

    def _check_positive(self, **values: float) -> None:
        for name, value in values.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{type(self).__name__}: {name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class SingleExponential(Surrogate):
    """sigma = scale / (theta * width) * exp(-|h - theta| / (theta * width))  (sinabs' definition)."""

    width: float = 0.5
    scale: float = 1.0
    kind = 0

    def __post_init__(self):
        self._check_positive(width=self.width)

    def params(self):
        return (float(self.width), float(self.scale), 0.0)

    def derivative(self, h, theta):
        inv_width = 1 / (theta * self.width)
        return self.scale * inv_width * torch.exp(-torch.abs(h - theta) * inv_width)


@dataclass(frozen=True)
class PeriodicExponential(Surrogate):
    """Exponential bump at every spike level theta, 2 theta, ... (for multi-spike neurons).

    sigma = scale / (theta * width) * exp(-d / (theta * width)), d = distance of h to the
    nearest level (theta - h below theta).
    """

    width: float = 0.5
    scale: float = 1.0
    kind = 1

    def __post_init__(self):
        self._check_positive(width=self.width)

    def params(self):
        return (float(self.width), float(self.scale), 0.0)

    def derivative(self, h, theta):
        inv_width = 1 / (theta * self.width)
        above = torch.abs(h - theta * torch.round(h / theta))  # round half to even, like the kernels' rint
        dist = torch.where(h < theta, theta - h, above)
        return self.scale * inv_width * torch.exp(-dist * inv_width)


@dataclass(frozen=True)
class Heaviside(Surrogate):
    """sigma = 1[h >= theta - window] / theta  (sinabs' Heaviside)."""

    window: float = 1.0
    kind = 2

    def params(self):
        return (float(self.window), 0.0, 0.0)

    def derivative(self, h, theta):
        return torch.where(h >= theta - self.window, 1.0 / theta, torch.zeros_like(h))


@dataclass(frozen=True)
class Gaussian(Surrogate):
    """sigma = scale / (sqrt(2 pi) sigma) * exp(-(h - theta - mu)^2 / (2 sigma^2))."""

    mu: float = 0.0
    sigma: float = 0.5
    scale: float = 1.0
    kind = 3

    def __post_init__(self):
        self._check_positive(sigma=self.sigma)

    def params(self):
        return (float(self.mu), float(self.sigma), float(self.scale))

    def derivative(self, h, theta):
        z = h - theta - self.mu
        return self.scale / (math.sqrt(2.0 * math.pi) * self.sigma) * torch.exp(-(z * z) / (2.0 * self.sigma * self.sigma))


@dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """sigma = scale / (1 + slope |h - theta|)^2  (SuperSpike, Zenke & Ganguli 2018)."""

    slope: float = 25.0
    scale: float = 1.0
    kind = 4

    def __post_init__(self):
        self._check_positive(slope=self.slope)

    def params(self):
        return (float(self.slope), float(self.scale), 0.0)

    def derivative(self, h, theta):
        d = 1.0 + self.slope * torch.abs(h - theta)
        return self.scale / (d * d)


SuperSpike = FastSigmoid


@dataclass(frozen=True)
class ATan(Surrogate):
    """sigma = (alpha / 2) / (1 + (pi/2 * alpha * (h - theta))^2)  (SpikingJelly / snnTorch ATan)."""

    alpha: float = 2.0
    kind = 5

    def __post_init__(self):
        self._check_positive(alpha=self.alpha)

    def params(self):
        return (float(self.alpha), 0.0, 0.0)

    def derivative(self, h, theta):
        z = math.pi / 2 * self.alpha * (h - theta)
        return self.alpha / 2 / (1.0 + z * z)


@dataclass(frozen=True)
class Truncated(Surrogate):
    """``base`` inside the band |h - theta| < band * theta, exactly 0 outside (Perez-Nieves & Goodman
    2021). The zeros make neuron-steps outside the band "inactive": ``gradient="sparse"`` skips them
    (DESIGN.md §6). On a dense layer it is an ordinary surrogate, so dense and sparse runs compute the
    same function. S3GD's surrogate is ``Truncated(FastSigmoid(slope=100), band)``.
    """

    base: Surrogate = FastSigmoid(slope=100.0)
    band: float = 0.2

    def __post_init__(self):
        if not isinstance(self.base, Surrogate) or isinstance(self.base, Truncated):
            raise TypeError(f"Truncated: base must be an (untruncated) exodus surrogate, got {self.base!r}")
        self._check_positive(band=self.band)

    @property
    def kind(self) -> int:  # type: ignore[override]
        return self.base.kind

    def params(self):
        return self.base.params()

    def derivative(self, h, theta):
        inside = torch.abs(h - theta) < self.band * theta
        return torch.where(inside, self.base.derivative(h, theta), torch.zeros_like(h))
