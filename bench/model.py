"""The Multi-Bin queueing model (README's "References"): closed forms and a vectorized
simulator.

Model: one server serves batches of exactly B requests (the last batch of a bin may be
short when the requests run out); a batch takes as long as its longest member; requests
are split into k equal-mass bins on their *predicted* length and a batch is formed from
B requests of one bin; formed batches are served in order of formation.

Time is counted in decode steps: a request of length l needs l steps, so a batch's time
is the max of its members' lengths. ``step_ms`` converts steps to wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("saturate", "poisson")


def closed_form_throughput(batch: int, bins: int, l_min: float, l_max: float) -> float:
    """Requests per time unit of k equal-mass bins for l ~ Uniform[l_min, l_max].

    C_k = B / (E[l] + Δ(B−1) / (2k(B+1))); k = 1 equals B / (l_min + Δ·B/(B+1)).
    """
    if batch < 1 or bins < 1 or l_max < l_min:
        raise ValueError(f"need batch >= 1, bins >= 1, l_max >= l_min; got {batch}, {bins}")
    delta = l_max - l_min
    mean = (l_min + l_max) / 2
    return batch / (mean + delta * (batch - 1) / (2 * bins * (batch + 1)))


def equal_mass_edges(predicted: np.ndarray, bins: int) -> np.ndarray:
    """k-1 edges at the 1/k … (k-1)/k quantiles; bin i holds values in (edge[i-1], edge[i]]."""
    return np.quantile(predicted.astype(np.float64), np.arange(1, bins) / bins)


@dataclass(frozen=True)
class Simulation:
    """Per-request outcomes of one simulated run (time in decode steps)."""

    lengths: np.ndarray  # [N] actual lengths
    arrival: np.ndarray  # [N]
    start: np.ndarray  # [N] start of the request's batch
    finish: np.ndarray  # [N] end of the request's batch
    num_batches: int

    @property
    def makespan(self) -> float:
        return float(self.finish.max() - self.arrival.min())

    @property
    def requests_per_step(self) -> float:
        return len(self.lengths) / self.makespan

    @property
    def tokens_per_step(self) -> float:
        return float(self.lengths.sum()) / self.makespan

    @property
    def ttft(self) -> np.ndarray:
        return self.start + 1.0 - self.arrival  # first token after the batch's first step

    @property
    def latency(self) -> np.ndarray:
        return self.finish - self.arrival  # a static batch returns when its straggler ends


def simulate(
    lengths: np.ndarray,
    predicted: np.ndarray,
    arrival: np.ndarray,
    bins: int,
    batch: int,
) -> Simulation:
    """Serve the requests under k equal-mass bins; all arrays are [N], arrival sorted."""
    n = len(lengths)
    if not (len(predicted) == len(arrival) == n) or n == 0:
        raise ValueError("lengths, predicted and arrival must be non-empty and of equal size")
    if bins < 1 or batch < 1:
        raise ValueError(f"bins and batch must be >= 1, got {bins}, {batch}")
    bin_of = np.searchsorted(equal_mass_edges(predicted, bins), predicted, side="left")
    # Requests grouped by bin, arrival order inside a bin.
    order = np.lexsort((np.arange(n), bin_of))  # [N]
    sorted_bin = bin_of[order]
    bin_start = np.searchsorted(sorted_bin, np.arange(bins), side="left")  # [k]
    pos_in_bin = np.arange(n) - bin_start[sorted_bin]  # [N]
    batch_in_bin = pos_in_bin // batch
    # A new batch begins where the bin changes or the in-bin batch index changes.
    new_batch = np.ones(n, dtype=bool)
    new_batch[1:] = (sorted_bin[1:] != sorted_bin[:-1]) | (batch_in_bin[1:] != batch_in_bin[:-1])
    heads = np.flatnonzero(new_batch)  # [num_batches] first member of each batch
    batch_time = np.maximum.reduceat(lengths[order].astype(np.float64), heads)
    formed = np.maximum.reduceat(arrival[order], heads)  # the batch exists once its last joins
    # Serve in formation order (ties: round-robin across bins, i.e. by in-bin index then bin).
    serve = np.lexsort((sorted_bin[heads], batch_in_bin[heads], formed))
    finish_sorted = _single_server_finish(formed[serve], batch_time[serve])
    finish_of_batch = np.empty_like(finish_sorted)
    finish_of_batch[serve] = finish_sorted
    batch_id = np.cumsum(new_batch) - 1  # [N] batch of each sorted request
    finish = np.empty(n)
    finish[order] = finish_of_batch[batch_id]
    start = np.empty(n)
    start[order] = (finish_of_batch - batch_time)[batch_id]
    return Simulation(lengths, arrival, start, finish, len(heads))


def _single_server_finish(ready: np.ndarray, service: np.ndarray) -> np.ndarray:
    """end_i = max(ready_i, end_{i-1}) + s_i, vectorized: S_i + max_{j<=i}(ready_j − S_{j−1})."""
    total = np.cumsum(service)
    before = total - service
    return total + np.maximum.accumulate(ready - before)


def arrivals(n: int, kind: str, rate: float, rng: np.random.Generator) -> np.ndarray:
    """All at t=0 (saturation, for throughput) or a Poisson process of the given rate."""
    if kind == "saturate":
        return np.zeros(n)
    if kind == "poisson":
        if rate <= 0:
            raise ValueError(f"poisson arrivals need rate > 0, got {rate}")
        return np.cumsum(rng.exponential(1.0 / rate, size=n))
    raise ValueError(f"arrival must be one of {ARRIVALS}, got {kind!r}")


def noisy_prediction(lengths: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Predicted = actual × lognormal(0, sigma); sigma = 0 is the oracle."""
    if sigma < 0:
        raise ValueError(f"prediction noise must be >= 0, got {sigma}")
    if sigma == 0:
        return lengths.astype(np.float64)
    return lengths * rng.lognormal(0.0, sigma, size=len(lengths))


def sweep(
    lengths: np.ndarray,
    bins: Sequence[int],
    batch: int,
    arrival: np.ndarray,
    predicted: np.ndarray,
) -> list[Simulation]:
    return [simulate(lengths, predicted, arrival, k, batch) for k in bins]
