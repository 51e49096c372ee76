"""Distributions a scenario can draw from: small tables such as
``{dist = "lognormal", mean = "80ms", sd = "40ms"}``.

Two families: :data:`DurationDist` (values are durations, sampled in seconds) and
:data:`CountDist` (whole numbers: tabs, burst sizes). A bare value is shorthand for a constant.
Every distribution samples from a ``numpy.random.Generator`` it is handed; none owns randomness.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import BeforeValidator, Field, model_validator

from sim.model import Model
from sim.units import Duration, SignedDuration


class _Dist(Model):
    #: every draw is a number at least +0.0 (never negative, -0.0 or NaN), whatever the
    #: parameters: a caller flooring draws at 0 may skip it
    never_negative: ClassVar[bool] = False

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Return ``size`` draws as a float array (seconds for durations)."""
        raise NotImplementedError

    @property
    def mean(self) -> float:
        """The distribution's mean, in the same unit as its samples."""
        raise NotImplementedError

    def quantile(self, u: np.ndarray) -> np.ndarray:
        """The values at probabilities ``u`` (an array in [0, 1)): ``quantile(rng.random(n))``
        draws ``n`` values, and two distributions given the same ``u`` give coupled draws (one
        slow moment is slow in both)."""
        raise NotImplementedError


class Constant(_Dist):
    """Always the same value."""

    dist: Literal["constant"] = "constant"
    value: SignedDuration

    def sample(self, rng, size):
        return np.full(size, self.value)

    def quantile(self, u):
        return np.full(np.shape(u), self.value, dtype=float)

    @property
    def mean(self):
        return self.value


class Exponential(_Dist):
    """Memoryless waits with the given mean (Poisson arrivals between them)."""

    dist: Literal["exponential"] = "exponential"
    mean_: Duration = Field(alias="mean")
    never_negative: ClassVar[bool] = True  # a non-negative mean times a standard exponential

    def sample(self, rng, size):
        return rng.exponential(self.mean_, size)

    def quantile(self, u):
        return -self.mean_ * np.log1p(-np.asarray(u, float))

    @property
    def mean(self):
        return self.mean_


class Uniform(_Dist):
    """Uniform on ``[low, high]``."""

    dist: Literal["uniform"] = "uniform"
    low: SignedDuration
    high: SignedDuration

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError("expected high >= low")
        return self

    def sample(self, rng, size):
        return rng.uniform(self.low, self.high, size)

    def quantile(self, u):
        return self.low + np.asarray(u, float) * (self.high - self.low)

    @property
    def mean(self):
        return (self.low + self.high) / 2


class Normal(_Dist):
    """Normal with mean and standard deviation. Used for durations that cannot be negative,
    draws are clipped at zero by the engine; clock skew keeps its sign."""

    dist: Literal["normal"] = "normal"
    mean_: SignedDuration = Field(alias="mean")
    sd: Duration

    def sample(self, rng, size):
        return rng.normal(self.mean_, self.sd, size)

    def quantile(self, u):
        from scipy.special import ndtri

        return self.mean_ + self.sd * ndtri(np.asarray(u, float))

    @property
    def mean(self):
        return self.mean_


class Lognormal(_Dist):
    """Lognormal given by the mean and standard deviation *of the durations themselves*
    (not of their logarithm), as latency is usually reported."""

    dist: Literal["lognormal"] = "lognormal"
    mean_: Duration = Field(alias="mean")
    sd: Duration
    never_negative: ClassVar[bool] = True  # exp() of a normal draw

    @model_validator(mode="after")
    def _positive(self):
        if self.mean_ <= 0:
            raise ValueError("expected mean > 0")
        return self

    def sample(self, rng, size):
        # a stream draws a batch at a time: the parameters' arithmetic cost as much as the draws
        return rng.lognormal(*lognormal_parameters(self.mean_, self.sd), size)

    def quantile(self, u):
        from scipy.special import ndtri

        sigma2 = math.log1p((self.sd / self.mean_) ** 2)
        mu = math.log(self.mean_) - sigma2 / 2
        return np.exp(mu + math.sqrt(sigma2) * ndtri(np.asarray(u, float)))

    @property
    def mean(self):
        return self.mean_


@functools.lru_cache(maxsize=64)
def lognormal_parameters(mean: float, sd: float) -> tuple[float, float]:
    """numpy's (mean, sigma) of the logarithm, for a lognormal of ``mean`` and ``sd``."""
    sigma2 = math.log1p((sd / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


class _Weighted(_Dist):
    """Draws from the list ``values`` (declared by each family), optionally ``weights``-ed."""

    weights: list[float] | None = None
    _dtype: ClassVar[type] = float

    @model_validator(mode="after")
    def _weights(self):
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError("expected as many weights as values")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("expected non-negative weights with a positive sum")
        return self

    def sample(self, rng, size):
        p = None if self.weights is None else np.asarray(self.weights, float) / sum(self.weights)
        return rng.choice(np.asarray(self.values, self._dtype), size, p=p)

    def quantile(self, u):
        values = np.asarray(self.values, float)
        weights = np.ones(len(values)) if self.weights is None else np.asarray(self.weights, float)
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(weights[order]) / weights.sum()
        index = np.searchsorted(cumulative, np.asarray(u, float), side="right")
        return values[order][np.minimum(index, len(values) - 1)]

    @property
    def mean(self):
        return float(np.average(self.values, weights=self.weights))


class Empirical(_Weighted):
    """Draws from a list of observed values, optionally weighted."""

    dist: Literal["empirical"] = "empirical"
    values: list[SignedDuration] = Field(min_length=1)


def _constant_shorthand(value: Any) -> Any:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return {"dist": "constant", "value": value}
    return value


DurationDist = Annotated[
    Union[Constant, Exponential, Uniform, Normal, Lognormal, Empirical],
    Field(discriminator="dist"),
    BeforeValidator(_constant_shorthand),
]


class CountConstant(_Dist):
    """Always the same whole number."""

    dist: Literal["constant"] = "constant"
    value: int = Field(ge=0)

    def sample(self, rng, size):
        return np.full(size, self.value, dtype=np.int64)

    @property
    def mean(self):
        return float(self.value)


class CountUniform(_Dist):
    """A whole number from ``low`` to ``high``, both included."""

    dist: Literal["uniform"] = "uniform"
    low: int = Field(ge=0)
    high: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError("expected high >= low")
        return self

    def sample(self, rng, size):
        # the dtype named (it is the default) halves the call: numpy's own lookup of it is slow
        return rng.integers(self.low, self.high + 1, size, dtype=np.int64)

    @property
    def mean(self):
        return (self.low + self.high) / 2


class CountPoisson(_Dist):
    """``min`` plus a Poisson number with mean ``mean - min``."""

    dist: Literal["poisson"] = "poisson"
    mean_: float = Field(alias="mean", gt=0)
    min: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _above_min(self):
        if self.mean_ < self.min:
            raise ValueError("expected mean >= min")
        return self

    def sample(self, rng, size):
        return self.min + rng.poisson(self.mean_ - self.min, size)

    @property
    def mean(self):
        return self.mean_


class CountEmpirical(_Weighted):
    """Draws from a list of whole numbers, optionally weighted."""

    dist: Literal["empirical"] = "empirical"
    values: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    _dtype: ClassVar[type] = np.int64


CountDist = Annotated[
    Union[CountConstant, CountUniform, CountPoisson, CountEmpirical],
    Field(discriminator="dist"),
    BeforeValidator(_constant_shorthand),
]
