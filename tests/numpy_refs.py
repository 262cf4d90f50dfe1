"""Numpy references for one component each, written from the papers' formulas (not from archc's code).

Shared by tests/emit_torch/test_oracles_torch.py and tests/emit_onnx/test_oracles_onnx.py: both
emitters' component outputs are checked against these, so two emitters wrong in the same way fail.
Everything is float64; weights follow the torch Linear layout W [out, in] (y = x W^T + b).
"""

from __future__ import annotations

import math

import numpy as np

# ---- norms (Ba et al. 2016; Zhang & Sennrich 2019) ---------------------------------------------


def layernorm(x, w, b=None, eps=1e-5, one_plus=False):
    """(x - mean) / sqrt(var + eps) * w (+ b), var the biased variance over the last axis; Gemma's (1 + w)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * ((1.0 + w) if one_plus else w)
    return y if b is None else y + b


def rmsnorm(x, w, b=None, eps=1e-6, one_plus=False):
    """x / sqrt(mean(x^2) + eps) * w (+ b): no centring (Zhang & Sennrich 2019)."""
    y = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * ((1.0 + w) if one_plus else w)
    return y if b is None else y + b


# ---- activations and the MLP (Hendrycks & Gimpel 2016; Shazeer 2020) ---------------------------

_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):
    return np.maximum(x, 0.0)


def silu(x):
    return x / (1.0 + np.exp(-x))


# activation name -> (elementwise function, gated)
ACTIVATIONS = {
    "gelu": (gelu, False), "gelu_tanh": (gelu_tanh, False), "relu": (relu, False), "silu": (silu, False),
    "swiglu": (silu, True), "geglu": (gelu, True), "geglu_tanh": (gelu_tanh, True), "reglu": (relu, True),
}


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def mlp(x, act: str, up_w, down_w, gate_w=None, up_b=None, down_b=None, gate_b=None):
    """down(act(up x)), or gated: down(act(gate x) * up x)."""
    f, gated = ACTIVATIONS[act]
    h = f(linear(x, gate_w, gate_b)) * linear(x, up_w, up_b) if gated else f(linear(x, up_w, up_b))
    return linear(h, down_w, down_b)


# ---- positions ---------------------------------------------------------------------------------


def positions(attention_mask):
    """pos(j) = (number of real tokens up to and including j) - 1 (left padding gets -1)."""
    return np.cumsum(attention_mask, -1) - 1


def sinusoidal(pos, d: int, base: float = 10000.0):
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    out = np.zeros(pos.shape + (d,))
    for i in range(0, d, 2):
        angle = pos / base ** (i / d)
        out[..., i] = np.sin(angle)
        if i + 1 < d:
            out[..., i + 1] = np.cos(angle)
    return out


def rope(x, pos, rotary_dim: int, theta: float, style: str):
    """RoFormer (Su et al. 2021) on x [B, H, S, hd], positions [B, S]: the first rotary_dim dims are
    rotated in pairs by angle p * theta^(-2i/rotary_dim); `half` pairs (i, i + d/2) (GPT-NeoX),
    `interleaved` pairs (2i, 2i + 1) (the paper's layout); the other dims pass through."""
    d = rotary_dim
    out = x.copy()
    for i in range(d // 2):
        angle = pos[:, None, :] * theta ** (-2.0 * i / d)  # [B, 1, S]
        a, b = (i, i + d // 2) if style == "half" else (2 * i, 2 * i + 1)
        xa, xb = x[..., a], x[..., b]
        out[..., a] = xa * np.cos(angle) - xb * np.sin(angle)
        out[..., b] = xb * np.cos(angle) + xa * np.sin(angle)
    return out


def alibi_slopes_pow2(n_heads: int, max_bias: float = 8.0):
    """Press et al. 2021, for n a power of two: m_h = 2^(-max_bias * h / n), h = 1..n."""
    assert n_heads & (n_heads - 1) == 0
    return np.array([2.0 ** (-max_bias * h / n_heads) for h in range(1, n_heads + 1)])


# ---- attention ---------------------------------------------------------------------------------


def visible(attention_mask, seq: int, mask: str = "causal", prefix_len=None, window: int | None = None):
    """[B, S, T] bool: query i (the last `seq` columns) may attend key j iff j is a real token and
    pos(j) <= pos(i), or pos(j) < prefix_len for the prefix mask (GLM, Du et al. 2022); with a
    sliding window (Mistral) also pos(i) - pos(j) < window."""
    pos = positions(attention_mask)
    q, k = pos[:, -seq:, None], pos[:, None, :]
    v = k <= q
    if mask == "prefix":
        v = v | (k < np.asarray(prefix_len)[:, None, None])
    if window is not None:
        v = v & (q - k < window)
    return v & attention_mask[:, None, :].astype(bool)


def attention(x, attention_mask, w: dict, *, n_heads: int, kv_heads: int, head_dim: int, scale: float,
              mask: str = "causal", prefix_len=None, window=None, rope_pos=None, rotary_dim=None, theta=10000.0,
              style="half", alibi_slopes=None):
    """Multi-head attention (Vaswani et al. 2017) with grouped K/V heads (Ainslie et al. 2023: query
    head h reads K/V head h // (n_heads / kv_heads)), RoPE on q and k, an ALiBi bias -m_h (i - j),
    softmax over the visible keys only. No past: keys are the current tokens. w: q/k/v/o weight and bias."""
    B, S, _ = x.shape
    q = linear(x, w["q.weight"], w.get("q.bias")).reshape(B, S, n_heads, head_dim).transpose(0, 2, 1, 3)
    k = linear(x, w["k.weight"], w.get("k.bias")).reshape(B, S, kv_heads, head_dim).transpose(0, 2, 1, 3)
    v = linear(x, w["v.weight"], w.get("v.bias")).reshape(B, S, kv_heads, head_dim).transpose(0, 2, 1, 3)
    if rope_pos is not None:
        q, k = rope(q, rope_pos, rotary_dim, theta, style), rope(k, rope_pos, rotary_dim, theta, style)
    group = n_heads // kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) * scale  # [B, H, S, T]
    if alibi_slopes is not None:
        pos = positions(attention_mask)
        dist = pos[:, -S:, None] - pos[:, None, :]  # i - j
        scores = scores - alibi_slopes[None, :, None, None] * dist[:, None]
    vis = visible(attention_mask, S, mask, prefix_len, window)[:, None]
    scores = np.where(vis, scores, -np.inf)
    m = scores.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(scores - m)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(B, S, n_heads * head_dim)
    return linear(y, w["o.weight"], w.get("o.bias"))
