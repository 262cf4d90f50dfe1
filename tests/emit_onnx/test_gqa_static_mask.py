"""onnxruntime-genai's CUDA-graph mode (enable_cuda_graph=1) feeds the prompt step a static attention_mask
[batch, max_length]: the left-padded prompt's mask in the first columns, zeros after it
(src/models/position_inputs.cpp, InitializeStaticMask), and past/present as one max_length buffer.
The cuda target's GroupQueryAttention layout must read that mask the same as the contract's
[batch, prompt] mask. It once took the new tokens' mask from the last `seq` columns, which under the
static layout is part prompt, part zeros whenever max_length < 2 * prompt: the prompt was rotated
by the wrong amount (genai's first token was wrong at prompt 512, right at 16). Oracle: the same
model fed the contract's mask; negative control: a mask whose ones are shifted to the wrong place."""

from __future__ import annotations

import numpy as np
import pytest

import archc
from archc.runner import Session
from conftest import tiny_spec
from exporters.onnx_export import export


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gqa_static") / "llama"
    export(archc.compile(tiny_spec("llama")), d, target="cuda", fused_fp32=True)
    return d


def _static_run(s: Session, ids: np.ndarray, mask: np.ndarray, max_len: int) -> np.ndarray:
    """One prompt step the way genai runs it in graph mode: mask padded with zeros to max_len,
    past = present = a zeroed max_len buffer. Returns the logits of the last position."""
    B, L = ids.shape
    full = np.zeros((B, max_len), np.int64)
    full[:, :L] = mask
    past = {f"past_key_values.{i}.{kv}": np.zeros((B, s.kv_heads, max_len, s.head_dim), np.float32)
            for i in range(s.n_layers) for kv in ("key", "value")}
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, _ = s.forward(ids, full, pos, None, past)
    return logits[:, -1]


@pytest.mark.parametrize("L,max_len", [(12, 16), (12, 20), (5, 40)])
def test_static_mask_prompt_step_matches_contract(gqa_model, L, max_len):
    s = Session(gqa_model, device="cpu")
    assert s.kv_cache == "shared"
    rng = np.random.default_rng(L)
    # batch 1: onnxruntime's GroupQueryAttention refuses a multi-token step with a total length past
    # the new tokens for batch > 1, genai's own exports included
    ids = rng.integers(3, s.vocab, (1, L)).astype(np.int64)
    mask = np.ones((1, L), np.int64)
    want = s.forward(ids, mask, np.clip(np.cumsum(mask, 1) - 1, 0, None))[0][:, -1]
    got = _static_run(s, ids, mask, max_len)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_static_mask_negative_control(gqa_model):
    """The comparison can fail: ones at the end of the static buffer instead of the start (the layout
    the old code assumed) are not the same prompt for row 0."""
    s = Session(gqa_model, device="cpu")
    L, max_len = 12, 16
    ids = np.random.default_rng(1).integers(3, s.vocab, (1, L)).astype(np.int64)
    mask = np.ones((1, L), np.int64)
    want = s.forward(ids, mask, np.arange(L)[None])[0][:, -1]
    shifted = np.zeros((1, max_len), np.int64)
    shifted[:, 1:L + 1] = 1  # one leading zero: read as one pad token
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, s.kv_heads, max_len, s.head_dim), np.float32)
            for i in range(s.n_layers) for kv in ("key", "value")}
    got = s.forward(ids, shifted, np.arange(L)[None], None, past)[0][:, -1]
    assert np.abs(got - want).max() > 1e-3
