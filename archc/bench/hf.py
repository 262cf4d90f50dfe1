"""The Hugging Face model that computes what an archc graph computes, for `archc bench`'s `hf` backends.

`hf_equivalent(graph)` answers with (model type, transformers config, name map) when one of the
transformers classes below reproduces the graph exactly, else with the reason it does not. The name
map turns archc's parameter names (graph full names) into the HF state-dict names, re-laying out
fused or transposed weights (GPT-2's Conv1D [in, out]; BLOOM's per-head interleaved query_key_value),
so the HF model runs with the same seeded weights as archc's own backends.

This reads the resolved spec the graph carries (it is a bridge to another library's config, not an
emitter), and it refuses every spec whose axes the HF class cannot express: a silently different
model would make the comparison meaningless. Mapped: llama, gpt2, bloom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from archc.graph import ComponentGraph
from archc.spec import (
    Activation,
    AlibiPosition,
    EmbeddingNorm,
    LearnedPosition,
    MaskKind,
    NormKind,
    NormPlacement,
    NormScale,
    OutputHead,
    ResidualLayout,
    RopePosition,
    RopeStyle,
    Spec,
)


@dataclass
class HfEquivalent:
    model_type: str
    config: object  # a transformers PreTrainedConfig
    model_class: type
    convert: Callable[[dict], dict]  # archc state dict -> HF state dict


def _common_problems(s: Spec) -> list[str]:
    a, e = s.attention, s.embedding
    out = []
    if s.norm.placement is not NormPlacement.pre:
        out.append(f"norm.placement {s.norm.placement.value}")
    if s.norm.scale is not NormScale.weight:
        out.append("norm.scale one_plus_weight")
    if s.residual.layout is not ResidualLayout.sequential:
        out.append("residual.layout parallel")
    if a.mask is not MaskKind.causal or a.sliding_window is not None:
        out.append("a non-causal or sliding-window mask")
    if abs(a.softmax_scale * a.head_dim**0.5 - 1) > 1e-9:
        out.append("a custom softmax_scale")
    if s.embedding_multiplier != 1.0 or e.head_bias or e.head_vocab_size != s.vocab_size:
        out.append("an embedding multiplier, head bias or head vocab size")
    return out


def _llama(s: Spec) -> HfEquivalent | str:
    from transformers import LlamaConfig, LlamaForCausalLM

    a, p, m = s.attention, s.position, s.mlp
    bad = _common_problems(s)
    if s.norm.kind is not NormKind.rmsnorm or s.norm.bias:
        bad.append("a norm other than RMSNorm without bias")
    if m.activation is not Activation.swiglu or m.bias:
        bad.append("an MLP other than SwiGLU without bias")
    if not isinstance(p, RopePosition) or p.style is not RopeStyle.half or p.rotary_dim != a.head_dim:
        bad.append("a position scheme other than full-width half-style RoPE")
    if a.qkv_bias != a.out_bias or s.embedding.norm is not EmbeddingNorm.none:
        bad.append("qkv_bias != out_bias or an embedding norm")
    if bad:
        return "llama cannot express " + ", ".join(bad)
    config = LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.d_model, intermediate_size=m.d_ff, num_hidden_layers=s.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim, hidden_act="silu",
        max_position_embeddings=s.max_seq_len, rms_norm_eps=s.norm.eps, attention_bias=a.qkv_bias, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": p.theta},
        tie_word_embeddings=s.embedding.output is OutputHead.tied,
    )
    proj = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

    def convert(sd: dict) -> dict:
        out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["final_norm.weight"]}
        out["lm_head.weight"] = sd.get("head.weight", sd["embed.weight"])
        for i in range(s.n_layers):
            pre, hp = f"layers.{i}", f"model.layers.{i}"
            out[f"{hp}.input_layernorm.weight"] = sd[f"{pre}.attn_norm.weight"]
            out[f"{hp}.post_attention_layernorm.weight"] = sd[f"{pre}.mlp_norm.weight"]
            for ours, theirs in proj.items():
                node = "attn" if ours in "qkvo" else "mlp"
                for kind in ("weight", "bias"):
                    if f"{pre}.{node}.{ours}.{kind}" in sd:
                        out[f"{hp}.{theirs}.{kind}"] = sd[f"{pre}.{node}.{ours}.{kind}"]
        return out

    return HfEquivalent("llama", config, LlamaForCausalLM, convert)


def _layernorm_gelu_problems(s: Spec) -> list[str]:
    a, m = s.attention, s.mlp
    bad = _common_problems(s)
    if s.norm.kind is not NormKind.layernorm or not s.norm.bias:
        bad.append("a norm other than LayerNorm with bias")
    if m.activation is not Activation.gelu_tanh or not m.bias:
        bad.append("an MLP other than tanh-GELU with bias")
    if not (a.qkv_bias and a.out_bias) or a.kv_heads != a.n_heads:
        bad.append("attention without biases or with shared K/V heads")
    if s.embedding.output is not OutputHead.tied:
        bad.append("an untied head")
    return bad


def _gpt2(s: Spec) -> HfEquivalent | str:
    from transformers import GPT2Config, GPT2LMHeadModel

    bad = _layernorm_gelu_problems(s)
    p = s.position
    if not isinstance(p, LearnedPosition) or p.offset != 0:
        bad.append("a position scheme other than a learned table without offset")
    if s.embedding.norm is not EmbeddingNorm.none:
        bad.append("an embedding norm")
    if bad:
        return "gpt2 cannot express " + ", ".join(bad)
    config = GPT2Config(
        vocab_size=s.vocab_size, n_positions=p.max_positions, n_embd=s.d_model, n_layer=s.n_layers,
        n_head=s.attention.n_heads, n_inner=s.mlp.d_ff, activation_function="gelu_new",
        layer_norm_epsilon=s.norm.eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
    )

    def convert(sd: dict) -> dict:
        out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"],
               "lm_head.weight": sd["embed.weight"],
               "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
        for i in range(s.n_layers):
            pre, hp = f"layers.{i}", f"transformer.h.{i}"
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[f"{hp}.{theirs}.weight"] = sd[f"{pre}.{ours}.weight"]
                out[f"{hp}.{theirs}.bias"] = sd[f"{pre}.{ours}.bias"]
            # Conv1D stores [in, out]: the transpose of torch.nn.Linear.
            out[f"{hp}.attn.c_attn.weight"] = torch_cat([sd[f"{pre}.attn.{x}.weight"].t() for x in "qkv"], 1)
            out[f"{hp}.attn.c_attn.bias"] = torch_cat([sd[f"{pre}.attn.{x}.bias"] for x in "qkv"], 0)
            out[f"{hp}.attn.c_proj.weight"] = sd[f"{pre}.attn.o.weight"].t()
            out[f"{hp}.attn.c_proj.bias"] = sd[f"{pre}.attn.o.bias"]
            out[f"{hp}.mlp.c_fc.weight"] = sd[f"{pre}.mlp.up.weight"].t()
            out[f"{hp}.mlp.c_fc.bias"] = sd[f"{pre}.mlp.up.bias"]
            out[f"{hp}.mlp.c_proj.weight"] = sd[f"{pre}.mlp.down.weight"].t()
            out[f"{hp}.mlp.c_proj.bias"] = sd[f"{pre}.mlp.down.bias"]
        return out

    return HfEquivalent("gpt2", config, GPT2LMHeadModel, convert)


def _bloom(s: Spec) -> HfEquivalent | str:
    from transformers import BloomConfig, BloomForCausalLM

    bad = _layernorm_gelu_problems(s)
    p, a = s.position, s.attention
    if not isinstance(p, AlibiPosition) or p.max_bias != 8.0:
        bad.append("a position scheme other than ALiBi with max_bias 8")
    if s.embedding.norm is not EmbeddingNorm.layernorm:
        bad.append("no LayerNorm after the embedding")
    if s.mlp.d_ff != 4 * s.d_model or a.head_dim * a.n_heads != s.d_model:
        bad.append("d_ff other than 4 * d_model or head_dim * n_heads != d_model")
    if bad:
        return "bloom cannot express " + ", ".join(bad)
    config = BloomConfig(vocab_size=s.vocab_size, hidden_size=s.d_model, n_layer=s.n_layers, n_head=a.n_heads,
                         layer_norm_epsilon=s.norm.eps, hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=True)
    H, hd, D = a.n_heads, a.head_dim, s.d_model

    def convert(sd: dict) -> dict:
        out = {"transformer.word_embeddings.weight": sd["embed.weight"], "lm_head.weight": sd["embed.weight"],
               "transformer.word_embeddings_layernorm.weight": sd["embed_norm.weight"],
               "transformer.word_embeddings_layernorm.bias": sd["embed_norm.bias"],
               "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
        for i in range(s.n_layers):
            pre, hp = f"layers.{i}", f"transformer.h.{i}"
            for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
                out[f"{hp}.{theirs}.weight"] = sd[f"{pre}.{ours}.weight"]
                out[f"{hp}.{theirs}.bias"] = sd[f"{pre}.{ours}.bias"]
            # query_key_value rows are laid out [head, (q, k, v), head_dim].
            w = [sd[f"{pre}.attn.{x}.weight"].reshape(H, hd, D) for x in "qkv"]
            b = [sd[f"{pre}.attn.{x}.bias"].reshape(H, hd) for x in "qkv"]
            out[f"{hp}.self_attention.query_key_value.weight"] = torch_stack(w, 1).reshape(3 * H * hd, D)
            out[f"{hp}.self_attention.query_key_value.bias"] = torch_stack(b, 1).reshape(3 * H * hd)
            for ours, theirs in (("attn.o", "self_attention.dense"), ("mlp.up", "mlp.dense_h_to_4h"),
                                 ("mlp.down", "mlp.dense_4h_to_h")):
                out[f"{hp}.{theirs}.weight"] = sd[f"{pre}.{ours}.weight"]
                out[f"{hp}.{theirs}.bias"] = sd[f"{pre}.{ours}.bias"]
        return out

    return HfEquivalent("bloom", config, BloomForCausalLM, convert)


def torch_cat(ts, dim):
    import torch

    return torch.cat(ts, dim)


def torch_stack(ts, dim):
    import torch

    return torch.stack(ts, dim)


MAPPERS = {"llama": _llama, "gpt2": _gpt2, "bloom": _bloom}


def hf_equivalent(graph: ComponentGraph) -> HfEquivalent | str:
    """The HF class that computes this graph exactly, or one line saying why none of MAPPERS does."""
    reasons = []
    for mapper in MAPPERS.values():
        got = mapper(graph.spec)
        if isinstance(got, HfEquivalent):
            return got
        reasons.append(got)
    return "no transformers class reproduces this spec (" + "; ".join(reasons) + ")"


def build_hf_model(graph: ComponentGraph, state: dict, *, dtype, device, attn_implementation: str = "eager"):
    """The HF model with archc's weights `state` (archc names), in `dtype` on `device`.

    Raises ValueError naming the first HF parameter the mapping leaves unset: every parameter
    must come from archc, so a mapping gap can never leave HF's own random init in place."""
    import torch

    eq = hf_equivalent(graph)
    if isinstance(eq, str):
        raise ValueError(eq)
    eq.config._attn_implementation = attn_implementation
    with torch.device(device):
        model = eq.model_class(eq.config).to(dtype)
    mapped = {k: v.to(device=device, dtype=dtype) for k, v in eq.convert(state).items()}
    wanted = set(model.state_dict())
    missing, unexpected = sorted(wanted - set(mapped)), sorted(set(mapped) - wanted)
    if missing or unexpected:
        raise ValueError(f"HF {eq.model_type} mapping incomplete: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict(mapped, strict=True)
    if eq.config.tie_word_embeddings:
        model.tie_weights()
    gc = model.generation_config
    gc.eos_token_id = None  # random weights: never stop early, every run makes exactly N tokens
    gc.pad_token_id = 0
    gc.bos_token_id = None
    return model.eval(), eq
