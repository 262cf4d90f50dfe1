"""Falcon (transformers models/falcon): three block forms from one config class.

- Falcon-7B form (new_decoder_architecture false, multi_query true, parallel_attn true): MQA, one
  shared LayerNorm feeding attention and MLP in parallel; fused qkv rows are [n_heads q | 1 k | 1 v].
- Falcon-40B/180B form (new_decoder_architecture true): GQA with num_kv_heads groups, parallel
  block with two norms ln_attn / ln_mlp (num_ln_in_parallel_attn 2, the default) or one; fused qkv
  rows are per group [group query heads | 1 key | 1 value][head_dim].
- sequential form (parallel_attn false): input_layernorm -> attention -> residual ->
  post_attention_layernorm -> MLP -> residual; without multi_query the fused qkv is per-head
  interleaved [head][q|k|v][head_dim].
Half-style RoPE on the whole head; `bias` switches every linear bias; the head is tied by default.
Falcon's ALiBi (alibi: true) adds bfloat16-rounded slopes before the 1/sqrt(head_dim) scale, which
the spec language cannot express, so it is refused.
"""

from __future__ import annotations

from archc.hf.common import (Cfg, Family, Rule, activation, dtype, grouped, hf_activation, layers, per_head, rope, rope_config,
                             rotary_rows, rows, tied)

FALCON_DEFAULTS = {
    "vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
    "num_ln_in_parallel_attn": None, "layer_norm_epsilon": 1e-5, "num_kv_heads": None, "alibi": False,
    "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True, "bias": False,
    "max_position_embeddings": 2048, "ffn_hidden_size": None, "activation": "gelu", "tie_word_embeddings": True,
    "initializer_range": 0.02,
}


def _layout(cfg: Cfg) -> tuple[str, int, str | None]:
    """(qkv layout: grouped | mqa | per_head, kv_heads, parallel norms: shared | separate | None for sequential)."""
    nh = cfg.integer("num_attention_heads")
    if cfg["new_decoder_architecture"]:
        if not cfg["parallel_attn"]:
            raise cfg.fail("parallel_attn", "with new_decoder_architecture: true builds a layer transformers cannot run "
                                            "(FalconDecoderLayer reads ln_attn, which it only makes for parallel_attn)")
        kv = cfg.get("num_kv_heads") or nh
        n_ln = cfg.get("num_ln_in_parallel_attn") or 2
        if n_ln not in (1, 2):
            raise cfg.fail("num_ln_in_parallel_attn", "must be 1 or 2")
        return "grouped", kv, "separate" if n_ln == 2 else "shared"
    if cfg["multi_query"]:
        kv, layout = 1, "mqa"
    else:
        kv, layout = cfg.get("num_kv_heads") or nh, "per_head"
        if kv != nh:
            raise cfg.fail("num_kv_heads", f"differs from num_attention_heads={nh} without multi_query or "
                                           "new_decoder_architecture; transformers' fused qkv then has n_heads K/V heads")
    if not cfg["parallel_attn"]:
        return layout, kv, None
    if cfg.get("num_ln_in_parallel_attn", 1) != 1:
        raise cfg.fail("num_ln_in_parallel_attn", "is 2 without new_decoder_architecture; transformers then builds "
                                                  "ln_attn/ln_mlp but runs input_layernorm, which it never builds")
    return layout, kv, "shared"


def falcon_spec(cfg: Cfg) -> dict:
    if cfg["alibi"]:
        raise cfg.fail("alibi", "is not expressible: Falcon's ALiBi rounds the slopes to bfloat16 and scales the bias by "
                                "1/sqrt(head_dim), unlike the spec's ALiBi (Press et al. 2021, as in BLOOM)")
    d = cfg.integer("n_embed") if cfg.data.get("n_embed") is not None else cfg.integer("hidden_size")
    nh = cfg.integer("num_attention_heads")
    if d % nh:
        raise cfg.fail("num_attention_heads", f"does not divide hidden_size {d}")
    _, kv, norms = _layout(cfg)
    theta, _ = rope(cfg, fraction_key=None)
    bias = bool(cfg["bias"])
    spec = {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": cfg.integer("num_hidden_layers"),
        "max_seq_len": cfg.integer("max_position_embeddings"), "dtype": dtype(cfg),
        "norm": {"kind": "layernorm", "eps": float(cfg["layer_norm_epsilon"]), "placement": "pre"},
        "mlp": {"activation": activation(cfg, "activation", gated=False), "d_ff": cfg.get("ffn_hidden_size") or 4 * d,
                "bias": bias},
        "position": {"kind": "rope", "theta": theta, "style": "half"},
        "attention": {"n_heads": nh, "kv_heads": kv, "qkv_bias": bias, "out_bias": bias},
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }
    if norms is not None:
        spec["residual"] = {"layout": "parallel", "parallel_norms": norms}
    return spec


def falcon_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    layout, kv, norms = _layout(cfg)
    a = spec.attention
    split = {
        "grouped": lambda: grouped(kv, a.n_heads // kv, a.head_dim),
        "mqa": lambda: rows(a.n_heads * a.head_dim, a.head_dim, a.head_dim),
        "per_head": lambda: per_head(a.n_heads, a.head_dim),
    }[layout]()
    split = rotary_rows(spec, "half", split, which="qkv")
    norm_names = {
        None: {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"},
        "shared": {"input_layernorm": "norm"},
        "separate": {"ln_attn": "attn_norm", "ln_mlp": "mlp_norm"},
    }[norms]
    table: dict = {}
    for hf, ours in norm_names.items():
        table[f"{hf}.weight"], table[f"{hf}.bias"] = f"{ours}.weight", f"{ours}.bias"
    table.update({
        "self_attention.query_key_value.weight": Rule(("attn.q.weight", "attn.k.weight", "attn.v.weight"), split),
        "self_attention.dense.weight": "attn.o.weight",
        "mlp.dense_h_to_4h.weight": "mlp.up.weight", "mlp.dense_4h_to_h.weight": "mlp.down.weight",
    })
    if a.qkv_bias:
        table["self_attention.query_key_value.bias"] = Rule(("attn.q.bias", "attn.k.bias", "attn.v.bias"), split)
        table["self_attention.dense.bias"] = "attn.o.bias"
        table["mlp.dense_h_to_4h.bias"], table["mlp.dense_4h_to_h.bias"] = "mlp.up.bias", "mlp.down.bias"
    out = layers(spec.n_layers, "transformer.h.{i}.", table)
    out.update({"transformer.word_embeddings.weight": Rule(("embed.weight",)),
                "transformer.ln_f.weight": Rule(("final_norm.weight",)), "transformer.ln_f.bias": Rule(("final_norm.bias",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def falcon_config(spec) -> dict:
    """The block form from the spec's residual layout and K/V heads (see the module docstring)."""
    a, r = spec.attention, spec.residual
    parallel = r.layout.value == "parallel"
    shared = parallel and r.parallel_norms.value == "shared"
    seven_b = parallel and shared and a.kv_heads == 1  # Falcon-7B: MQA with one shared norm
    new_arch = parallel and not seven_b
    return {
        "vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "num_hidden_layers": spec.n_layers,
        "num_attention_heads": a.n_heads, "num_kv_heads": a.kv_heads, "new_decoder_architecture": new_arch,
        "multi_query": a.kv_heads == 1, "parallel_attn": parallel,
        "num_ln_in_parallel_attn": (1 if shared else 2) if new_arch else None,
        "bias": a.qkv_bias, "ffn_hidden_size": spec.mlp.d_ff, "activation": hf_activation(spec),
        "layer_norm_epsilon": spec.norm.eps, "max_position_embeddings": spec.max_seq_len, **rope_config(spec),
        "alibi": False, "tie_word_embeddings": tied(spec), "initializer_range": spec.init.std,
        "hidden_dropout": 0.0, "attention_dropout": 0.0,
    }


# MQA + shared-norm parallel (7B), GQA + two-norm parallel (new_decoder_architecture), or sequential
# (parallel_attn false); fused qkv in each layout; ALiBi refused
FALCON = Family("falcon", FALCON_DEFAULTS, falcon_spec, falcon_tensors, aliases=(("", "transformer."),), ignore=(r"\.rotary_emb\.inv_freq$",),
                to_config=falcon_config, architecture="FalconForCausalLM", rope_style="half")
