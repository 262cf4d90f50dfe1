"""Generation feeds, one definition for every caller: the runner (onnxruntime), the PyTorch module's
greedy loop (exporters.torch_module.greedy_generate), the benchmark backends and the tests.

- Prompts of different lengths are left-padded into one batch; attention_mask marks real tokens.
- position_ids = cumsum(mask) - 1, clamped at 0 (padding sits at 0), the step's last `seq` columns.
- GLM's 2-D positions (PositionIds.glm2d, Du et al. 2022): a prompt token gets (position, 0); the
  k-th generated token (k >= 1) gets (last prompt position, k), its block position.
- A prefix-mask model (GLM) gets prefix_len = each prompt's length: the prompt is the bidirectional
  prefix, generated tokens are causal.

numpy only (no torch); torch callers wrap the arrays with torch.from_numpy.
"""

from __future__ import annotations

import numpy as np

from archc.components import PositionIds
from archc.errors import UserError


def check_prompts(prompts: list[list[int]], max_new_tokens: int, vocab: int, max_seq_len: int) -> None:
    """--prompt-ids and --max-new-tokens against the model (`archc run`, `archc generate-tp`): every prompt
    non-empty, every id in [0, vocab), the longest prompt plus the new tokens within max_seq_len."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("--prompt-ids: every prompt needs at least one token id")
    for p in prompts:
        a = np.asarray(p)  # integer prompts are checked in numpy (a Python loop took ~1 ms at 16 x 512 ids)
        if a.ndim == 1 and a.dtype.kind in "iu" and 0 <= a.min() and a.max() < vocab:
            continue
        bad = [t for t in p if not 0 <= int(t) < vocab]
        if bad:
            raise UserError(f"--prompt-ids: id {bad[0]} is outside the vocabulary [0, {vocab}); use ids below {vocab}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_seq_len:
        raise UserError(f"--prompt-ids: prompt of {longest} tokens + --max-new-tokens {max_new_tokens} exceeds the "
                        f"spec's max_seq_len {max_seq_len}; shorten the prompt or generate fewer tokens")
    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")


def left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [B, L], attention_mask [B, L], prefix_len [B]), int64, L the longest prompt."""
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = np.zeros((B, L), np.int64)
    mask = np.zeros((B, L), np.int64)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = p
        mask[b, L - len(p):] = 1
    return ids, mask, np.array([len(p) for p in prompts], np.int64)


def positions(mask: np.ndarray, seq: int, layout: PositionIds, prefix_len: np.ndarray | None = None,
              generated: int = 0) -> np.ndarray | None:
    """position_ids for a step of `seq` tokens whose attention_mask (past + step) is `mask`; None for a
    model without the input. `generated`: 0 for the prompt (or any step fed as plain positions), k for
    the k-th generated token, which GLM places at (last prompt position, k) using `prefix_len`."""
    if layout is PositionIds.none:
        return None
    if seq == 1:  # a decode step: the cumsum's last column is the row sum (a third of the host time per token)
        pos = np.maximum(mask.sum(1, keepdims=True) - 1, 0)
    else:
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)[:, -seq:]
    if layout is PositionIds.flat:
        return pos
    if layout is PositionIds.glm2d:
        if generated == 0:
            return np.stack([pos, np.zeros_like(pos)], 1)
        return np.stack([(prefix_len - 1)[:, None], np.full((len(prefix_len), 1), generated, np.int64)], 1)
    raise ValueError(f"position_ids layout {layout!r} has no feeds")
