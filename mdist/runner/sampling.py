"""Next-token choice: greedy (lowest id on ties), temperature, nucleus (top-p)."""

from __future__ import annotations

import math

import numpy as np

from mdist.errors import InputError


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> None:
        # NaN passes click's FloatRange (every comparison with it is false) and a negative seed its
        # int type: each was an internal error (numpy's ValueError) after the model had loaded.
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise InputError(f"--top-p must be a number in (0, 1], got {top_p}")
        if seed is not None and seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {seed}")
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))  # argmax returns the first (lowest) id on ties
        # The largest score is subtracted before dividing: a tiny temperature (1e-320) would turn
        # the scores themselves into infinities, and inf - inf into NaN probabilities.
        wide = logits.astype(np.float64)
        with np.errstate(over="ignore", under="ignore"):
            probs = np.exp((wide - wide.max()) / self.temperature)
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self.rng.choice(len(probs), p=probs))
