"""Picking the next token from logits on the host when generate samples (greedy picks need no Sampler)."""

from __future__ import annotations

import math

import numpy as np

from archc.errors import UserError


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> None:
    """The sampling options, each refused in one line naming it. `archc run` calls this before it opens the model,
    so a bad option is not reported after the session's own notes (or seconds of loading)."""
    if not (math.isfinite(temperature) and temperature > 0):  # nan passes `<= 0`
        raise UserError(f"--temperature {temperature}: must be a finite number > 0 (omit the sampling options for greedy decoding)")
    if top_k is not None and top_k < 1:
        raise UserError("--top-k must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if seed < 0:  # numpy's SeedSequence takes none: it was a ValueError traceback
        raise UserError(f"--seed {seed}: give a non-negative integer")


class Sampler:
    """Temperature, then top-k, then top-p (nucleus, Holtzman et al. 2020), from a seeded numpy Generator."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0):
        check_sampling(temperature, top_k, top_p, seed)
        self.t, self.k, self.p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        out = np.empty(len(logits), np.int64)
        for b, row in enumerate(logits.astype(np.float64) / self.t):
            order = np.argsort(-row, kind="stable")
            z = row[order]
            if self.k is not None:
                z = z[: self.k]
            prob = np.exp(z - z.max())
            prob /= prob.sum()
            if self.p is not None:
                keep = np.searchsorted(np.cumsum(prob), self.p) + 1  # smallest prefix with mass >= p
                prob = prob[:keep] / prob[:keep].sum()
            out[b] = order[self.rng.choice(len(prob), p=prob)]
        return out
