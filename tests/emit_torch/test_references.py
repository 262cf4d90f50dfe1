"""GLM and PaLM have no transformers class: check the emitted module against small reference
implementations written here from the papers' equations, in float64, with plain torch ops
(explicit LayerNorm, softmax and RoPE), the weights laid out as in the original projects and
mapped into archc's names. A wrong RoPE style or a causal mask in place of GLM's prefix mask
must make the comparison fail (negative controls), so agreement is not an accident.
"""

from __future__ import annotations

import math

import pytest
import torch

import archc
from exporters.torch_module import build_module
from conftest import tiny_spec

TOL = 1e-4  # relative: max |ours - reference| / max |reference|


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.detach().double() - ref).abs().max() / ref.abs().max())


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def softmax(scores):
    e = torch.exp(scores - scores.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _randomise(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Every parameter random, norms included (scale around 1, shifts around 0), float64."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if "norm" in name or "layernorm" in name:
            out[name] = (1 + 0.2 * x) if name.endswith(("weight", "gamma")) else 0.2 * x
        elif name.endswith("bias"):
            out[name] = 0.1 * x
        else:
            out[name] = 0.15 * x if x.dim() == 2 and "embed" not in name else 0.5 * x
    return out


# ================================================================================================
# GLM (Du et al. 2022), THUDM/GLM layout: word + position + block-position embeddings, pre-LN
# layers (input_layernorm -> attention -> add -> post_attention_layernorm -> MLP -> add), fused
# query_key_value [3D, D] split in thirds, scores masked as s * m - 10000 (1 - m) with the
# bidirectional-prefix ltor mask, tanh-GELU MLP (gelu_impl), final LayerNorm, logits = h E^T.


def glm_shapes(spec) -> dict[str, tuple]:
    D, F, V, P = spec.d_model, spec.mlp.d_ff, spec.vocab_size, spec.position.max_positions
    shapes = {"word_embeddings.weight": (V, D), "transformer.position_embeddings.weight": (P, D),
              "transformer.block_position_embeddings.weight": (P, D)}
    for i in range(spec.n_layers):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (D,), p + "input_layernorm.bias": (D,),
            p + "attention.query_key_value.weight": (3 * D, D), p + "attention.query_key_value.bias": (3 * D,),
            p + "attention.dense.weight": (D, D), p + "attention.dense.bias": (D,),
            p + "post_attention_layernorm.weight": (D,), p + "post_attention_layernorm.bias": (D,),
            p + "mlp.dense_h_to_4h.weight": (F, D), p + "mlp.dense_h_to_4h.bias": (F,),
            p + "mlp.dense_4h_to_h.weight": (D, F), p + "mlp.dense_4h_to_h.bias": (D,),
        })
    shapes.update({"transformer.final_layernorm.weight": (D,), "transformer.final_layernorm.bias": (D,)})
    return shapes


def glm_reference(w, spec, ids, position_ids, sep: int):
    """ids [B,S]; position_ids [B,2,S]; sep = length of the bidirectional context."""
    H, eps = spec.attention.n_heads, spec.norm.eps
    B, S = ids.shape
    D = spec.d_model
    hd = D // H
    h = (w["word_embeddings.weight"][ids] + w["transformer.position_embeddings.weight"][position_ids[:, 0]]
         + w["transformer.block_position_embeddings.weight"][position_ids[:, 1]])
    m = torch.ones(S, S, dtype=torch.float64).tril()
    m[:, :sep] = 1
    for i in range(spec.n_layers):
        p = f"transformer.layers.{i}."
        x = layer_norm(h, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], eps)
        mixed = x @ w[p + "attention.query_key_value.weight"].T + w[p + "attention.query_key_value.bias"]
        q, k, v = (t.view(B, S, H, hd).transpose(1, 2) for t in mixed.split(D, dim=-1))
        scores = q @ (k.transpose(-1, -2) / math.sqrt(hd))
        scores = scores * m - 10000.0 * (1.0 - m)
        ctx = (softmax(scores) @ v).transpose(1, 2).reshape(B, S, D)
        h = h + ctx @ w[p + "attention.dense.weight"].T + w[p + "attention.dense.bias"]
        x = layer_norm(h, w[p + "post_attention_layernorm.weight"], w[p + "post_attention_layernorm.bias"], eps)
        u = x @ w[p + "mlp.dense_h_to_4h.weight"].T + w[p + "mlp.dense_h_to_4h.bias"]
        u = 0.5 * u * (1.0 + torch.tanh(0.7978845608028654 * u * (1.0 + 0.044715 * u * u)))
        h = h + u @ w[p + "mlp.dense_4h_to_h.weight"].T + w[p + "mlp.dense_4h_to_h.bias"]
    h = layer_norm(h, w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"], eps)
    return h @ w["word_embeddings.weight"].T


def glm_to_archc(w, spec) -> dict[str, torch.Tensor]:
    D = spec.d_model
    out = {"embed.weight": w["word_embeddings.weight"],
           "pos_embed.position.weight": w["transformer.position_embeddings.weight"],
           "pos_embed.block.weight": w["transformer.block_position_embeddings.weight"],
           "final_norm.weight": w["transformer.final_layernorm.weight"],
           "final_norm.bias": w["transformer.final_layernorm.bias"]}
    for i in range(spec.n_layers):
        p, a = f"transformer.layers.{i}.", f"layers.{i}."
        for loc in ("weight", "bias"):
            q, k, v = w[p + f"attention.query_key_value.{loc}"].split(D, dim=0)
            out.update({a + f"attn.q.{loc}": q, a + f"attn.k.{loc}": k, a + f"attn.v.{loc}": v,
                        a + f"attn.o.{loc}": w[p + f"attention.dense.{loc}"],
                        a + f"attn_norm.{loc}": w[p + f"input_layernorm.{loc}"],
                        a + f"mlp_norm.{loc}": w[p + f"post_attention_layernorm.{loc}"],
                        a + f"mlp.up.{loc}": w[p + f"mlp.dense_h_to_4h.{loc}"],
                        a + f"mlp.down.{loc}": w[p + f"mlp.dense_4h_to_h.{loc}"]})
    return {k: v.float() for k, v in out.items()}


def glm_inputs(vocab: int):
    """Blank infilling (GLM section 2.1): context x1 x2 [M] x4 x5 (sep = 5), then the span being
    generated at the [M] position: position id stays 2, block position id counts 1, 2, 3."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (2, 8), generator=g)
    pos = torch.tensor([0, 1, 2, 3, 4, 2, 2, 2])
    block = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])
    return ids, torch.stack((pos, block))[None].expand(2, 2, 8).clone(), 5


@pytest.fixture(scope="module")
def glm():
    spec = tiny_spec("glm")
    w = _randomise(glm_shapes(spec), seed=11)
    return spec, w


def test_glm_matches_reference(glm):
    spec, w = glm
    ids, pos, sep = glm_inputs(spec.vocab_size)
    ref = glm_reference(w, spec, ids, pos, sep)
    model = build_module(archc.compile(spec), weights=glm_to_archc(w, spec))
    ours, _ = model(ids, position_ids=pos, prefix_len=torch.tensor([sep, sep]))
    assert rel_err(ours, ref) < TOL


def test_glm_cached_decode_and_left_padding_match_reference(glm):
    spec, w = glm
    ids, pos, sep = glm_inputs(spec.vocab_size)
    ref = glm_reference(w, spec, ids, pos, sep)
    model = build_module(archc.compile(spec), weights=glm_to_archc(w, spec))
    prefix = torch.tensor([sep, sep])
    logits, past = model(ids[:, :sep], position_ids=pos[:, :, :sep], prefix_len=prefix)
    steps = [logits]
    for t in range(sep, ids.shape[1]):
        logits, past = model(ids[:, t : t + 1], position_ids=pos[:, :, t : t + 1], prefix_len=prefix, past_key_values=past)
        steps.append(logits)
    assert rel_err(torch.cat(steps, dim=1), ref) < TOL
    # row 0 left-padded by 3: same logits on the real tokens
    pad = 3
    ids_p = torch.cat((torch.zeros(2, pad, dtype=torch.long), ids), dim=1)
    pos_p = torch.cat((torch.zeros(2, 2, pad, dtype=torch.long), pos), dim=2)
    mask = torch.ones_like(ids_p)
    mask[0, :pad] = 0
    ours, _ = model(ids_p, mask, position_ids=pos_p, prefix_len=prefix)
    assert rel_err(ours[0, pad:], ref[0]) < TOL


def test_glm_negative_control_causal_mask_fails(glm):
    spec, w = glm
    ids, pos, sep = glm_inputs(spec.vocab_size)
    ref = glm_reference(w, spec, ids, pos, sep)
    wrong = archc.compile(tiny_spec("glm", ["attention.mask=causal"]))
    ours, _ = build_module(wrong, weights=glm_to_archc(w, spec))(ids, position_ids=pos)
    assert rel_err(ours, ref) > 100 * TOL
    # and the comparison itself is sharp: the right model is within TOL of the same reference
    right, _ = build_module(archc.compile(spec), weights=glm_to_archc(w, spec))(ids, position_ids=pos, prefix_len=torch.tensor([sep, sep]))
    assert rel_err(right, ref) < TOL


# ================================================================================================
# PaLM (Chowdhery et al. 2022, section 2): parallel block y = x + attn(LN(x)) + mlp(LN(x)) with
# one LayerNorm without bias, multi-query attention (one K/V head of width head_dim), SwiGLU,
# RoPE (rotate-half form), no biases anywhere, input and output embeddings shared. Weights as in
# the fused layout of the paper's "parallel layers" (one input projection for q, k, v and both
# MLP inputs, as lucidrains/PaLM-pytorch lays it out: [q | k | v | ff_x | ff_gate]).


def palm_shapes(spec) -> dict[str, tuple]:
    D, F, V = spec.d_model, spec.mlp.d_ff, spec.vocab_size
    H, hd = spec.attention.n_heads, spec.attention.head_dim
    shapes = {"token_emb.weight": (V, D)}
    for i in range(spec.n_layers):
        shapes.update({f"layers.{i}.norm.gamma": (D,), f"layers.{i}.fused_attn_ff_proj.weight": (H * hd + 2 * hd + 2 * F, D),
                       f"layers.{i}.attn_out.weight": (D, H * hd), f"layers.{i}.ff_out.weight": (D, F)})
    shapes["norm.gamma"] = (D,)
    return shapes


def rope_half(x, positions, theta: float):
    """RoFormer rotation in rotate-half form: x * cos + rotate_half(x) * sin, frequencies duplicated."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = positions.double()[:, None] * inv_freq[None]
    freqs = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * freqs.cos() + torch.cat((-x2, x1), dim=-1) * freqs.sin()


def palm_reference(w, spec, ids):
    H, hd, F, eps, theta = spec.attention.n_heads, spec.attention.head_dim, spec.mlp.d_ff, spec.norm.eps, spec.position.theta
    B, S = ids.shape
    h = w["token_emb.weight"][ids]
    positions = torch.arange(S)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(spec.n_layers):
        x = layer_norm(h, w[f"layers.{i}.norm.gamma"], None, eps)
        q, k, v, ff_x, ff_gate = (x @ w[f"layers.{i}.fused_attn_ff_proj.weight"].T).split([H * hd, hd, hd, F, F], dim=-1)
        q = rope_half(q.view(B, S, H, hd).transpose(1, 2), positions, theta) * hd**-0.5
        k = rope_half(k, positions, theta)  # [B,S,hd]: the one shared key head
        sim = torch.einsum("bhid,bjd->bhij", q, k).masked_fill(~causal, -torch.finfo(torch.float64).max)
        out = torch.einsum("bhij,bjd->bhid", softmax(sim), v).transpose(1, 2).reshape(B, S, H * hd)
        swiglu = ff_x * (ff_gate * torch.sigmoid(ff_gate))
        h = h + out @ w[f"layers.{i}.attn_out.weight"].T + swiglu @ w[f"layers.{i}.ff_out.weight"].T
    return layer_norm(h, w["norm.gamma"], None, eps) @ w["token_emb.weight"].T


def palm_to_archc(w, spec) -> dict[str, torch.Tensor]:
    H, hd, F = spec.attention.n_heads, spec.attention.head_dim, spec.mlp.d_ff
    out = {"embed.weight": w["token_emb.weight"], "final_norm.weight": w["norm.gamma"]}
    for i in range(spec.n_layers):
        q, k, v, up, gate = w[f"layers.{i}.fused_attn_ff_proj.weight"].split([H * hd, hd, hd, F, F], dim=0)
        out.update({f"layers.{i}.norm.weight": w[f"layers.{i}.norm.gamma"],
                    f"layers.{i}.attn.q.weight": q, f"layers.{i}.attn.k.weight": k, f"layers.{i}.attn.v.weight": v,
                    f"layers.{i}.attn.o.weight": w[f"layers.{i}.attn_out.weight"],
                    f"layers.{i}.mlp.up.weight": up, f"layers.{i}.mlp.gate.weight": gate,
                    f"layers.{i}.mlp.down.weight": w[f"layers.{i}.ff_out.weight"]})
    return {k: v.float() for k, v in out.items()}


@pytest.fixture(scope="module")
def palm():
    spec = tiny_spec("palm")
    assert spec.attention.kv_heads == 1 and spec.residual.layout.value == "parallel" and not spec.norm.bias
    return spec, _randomise(palm_shapes(spec), seed=12)


def _palm_ids(vocab):
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(4))


def test_palm_matches_reference(palm):
    spec, w = palm
    ids = _palm_ids(spec.vocab_size)
    graph = archc.compile(spec)
    assert "head.weight" in graph.tied() and not any(n.endswith("bias") for n, _, _ in graph.params())
    ours, _ = build_module(graph, weights=palm_to_archc(w, spec))(ids)
    assert rel_err(ours, palm_reference(w, spec, ids)) < TOL


def test_palm_cached_decode_matches_reference(palm):
    spec, w = palm
    ids = _palm_ids(spec.vocab_size)
    model = build_module(archc.compile(spec), weights=palm_to_archc(w, spec))
    past, steps = None, []
    for t in range(ids.shape[1]):
        logits, past = model(ids[:, t : t + 1], past_key_values=past)
        steps.append(logits)
    assert rel_err(torch.cat(steps, dim=1), palm_reference(w, spec, ids)) < TOL


@pytest.mark.parametrize("wrong", [["position.style=interleaved"], ["residual.layout=parallel", "residual.parallel_norms=separate"]])
def test_palm_negative_controls_fail(palm, wrong):
    """The other RoPE style, or separate norms where PaLM shares one, must not pass."""
    spec, w = palm
    ids = _palm_ids(spec.vocab_size)
    weights = palm_to_archc(w, spec)
    if "residual.parallel_norms=separate" in wrong:  # same numbers, but the MLP norm is a fresh (unit) one
        weights = {k.replace(".norm.", ".attn_norm."): v for k, v in weights.items()}
        weights.update({f"layers.{i}.mlp_norm.weight": torch.ones(spec.d_model) for i in range(spec.n_layers)})
    ours, _ = build_module(archc.compile(tiny_spec("palm", wrong)), weights=weights)(ids)
    assert rel_err(ours, palm_reference(w, spec, ids)) > 100 * TOL
