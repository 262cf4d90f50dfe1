"""BLOOM (BigScience 2022; transformers models/bloom) and MPT (MosaicML; models/mpt): the ALiBi families.

BLOOM: LayerNorm right after the embedding, pre-norm blocks, ALiBi with slopes 2^(-8h/n) (the
non-power-of-two rule of Press et al.: the closest power's slopes, then every other slope of the next
power; archc.graph.alibi_slopes computes the same list), fused query_key_value per-head interleaved
[head][q|k|v][head_dim], tanh-GELU, biases everywhere, 4x MLP, tied head.
MPT: pre-norm LayerNorm without biases, no linear biases, exact GELU, ALiBi; Wqkv rows are
q | k | v. transformers' MPT always uses ALiBi with alibi_bias_max 8, multi-head attention and a
4x MLP whatever the config says, so configs asking for anything else are refused rather than
imported as a model transformers (and archc) would compute differently from the original.
"""

from __future__ import annotations

from archc.hf.common import Cfg, Family, Rule, dtype, layers, per_head, rows, tied

BLOOM_DEFAULTS = {
    "vocab_size": 250880, "hidden_size": 64, "n_layer": 2, "n_head": 8, "layer_norm_epsilon": 1e-5,
    "apply_residual_connection_post_layernorm": False, "tie_word_embeddings": True, "initializer_range": 0.02,
}
MPT_DEFAULTS = {
    "d_model": 2048, "n_heads": 16, "n_layers": 24, "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": 50368,
    "layer_norm_epsilon": 1e-5, "learned_pos_emb": True, "attn_config": None, "logit_scale": None, "no_bias": True,
    "norm_type": "low_precision_layernorm", "tie_word_embeddings": True, "initializer_range": 0.02,
}
MPT_ATTN_DEFAULTS = {
    "attn_type": "multihead_attention", "clip_qkv": None, "softmax_scale": None, "prefix_lm": False, "qk_ln": False,
    "alibi": True, "alibi_bias_max": 8,
}


def bloom_spec(cfg: Cfg) -> dict:
    cfg.require("apply_residual_connection_post_layernorm", (False, None),
                "(the residual taken after the norm) is not expressible; the spec's residual adds the block input")
    d = cfg.integer("n_embed") if cfg.data.get("n_embed") is not None else cfg.integer("hidden_size")
    n_layer = cfg.data.get("n_layer", cfg.data.get("num_hidden_layers", cfg["n_layer"]))
    n_head = cfg.data.get("n_head", cfg.data.get("num_attention_heads", cfg["n_head"]))
    eps = float(cfg["layer_norm_epsilon"])
    return {
        # BLOOM has no position table, so no length limit; 2048 is the training length (BigScience 2022)
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": int(n_layer),
        "max_seq_len": int(cfg.data.get("seq_length") or 2048), "dtype": dtype(cfg),
        "norm": {"kind": "layernorm", "eps": eps, "placement": "pre"},
        "mlp": {"activation": "gelu_tanh", "d_ff": 4 * d, "bias": True},  # bloom_gelu_forward: tanh approximation
        "position": {"kind": "alibi", "max_bias": 8.0},
        "attention": {"n_heads": int(n_head), "qkv_bias": True, "out_bias": True},
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied", "norm": "layernorm"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }


def bloom_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    a = spec.attention
    split = per_head(a.n_heads, a.head_dim)
    table = {
        "input_layernorm.weight": "attn_norm.weight", "input_layernorm.bias": "attn_norm.bias",
        "post_attention_layernorm.weight": "mlp_norm.weight", "post_attention_layernorm.bias": "mlp_norm.bias",
        "self_attention.query_key_value.weight": Rule(("attn.q.weight", "attn.k.weight", "attn.v.weight"), split),
        "self_attention.query_key_value.bias": Rule(("attn.q.bias", "attn.k.bias", "attn.v.bias"), split),
        "self_attention.dense.weight": "attn.o.weight", "self_attention.dense.bias": "attn.o.bias",
        "mlp.dense_h_to_4h.weight": "mlp.up.weight", "mlp.dense_h_to_4h.bias": "mlp.up.bias",
        "mlp.dense_4h_to_h.weight": "mlp.down.weight", "mlp.dense_4h_to_h.bias": "mlp.down.bias",
    }
    out = layers(spec.n_layers, "transformer.h.{i}.", table)
    out.update({
        "transformer.word_embeddings.weight": Rule(("embed.weight",)),
        "transformer.word_embeddings_layernorm.weight": Rule(("embed_norm.weight",)),
        "transformer.word_embeddings_layernorm.bias": Rule(("embed_norm.bias",)),
        "transformer.ln_f.weight": Rule(("final_norm.weight",)), "transformer.ln_f.bias": Rule(("final_norm.bias",)),
    })
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def _mpt_attn(cfg: Cfg) -> Cfg:
    attn = cfg["attn_config"] or {}
    if not isinstance(attn, dict):
        raise cfg.fail("attn_config", "must be a mapping")
    return Cfg(dict(attn, model_type=cfg.model_type), MPT_ATTN_DEFAULTS, f"{cfg.source} attn_config")


def mpt_spec(cfg: Cfg) -> dict:
    attn = _mpt_attn(cfg)
    attn.require("alibi", (True,), "is required: transformers' MPT always applies ALiBi and has no position table")
    attn.require("attn_type", ("multihead_attention",), "is not implemented by transformers' MPT (it always builds "
                                                        "multi-head attention); only multihead_attention imports")
    attn.require("qk_ln", (False, None), "(LayerNorm on queries and keys) is not expressible")
    attn.require("clip_qkv", (None, 0), "(clamping q, k, v) is not expressible")
    attn.require("prefix_lm", (False, None), "is not implemented by transformers' MPT")
    attn.require("alibi_bias_max", (8, 8.0), "differs from 8, which transformers' MPT always uses (it ignores the "
                                             "field), so the original MPT and transformers disagree")
    cfg.require("no_bias", (True,), "must be true: transformers' MPT builds no biases (no_bias false is not implemented)")
    cfg.require("norm_type", ("low_precision_layernorm", "layernorm"), "is not implemented by transformers' MPT (it "
                "always builds LayerNorm), so the original MPT and transformers disagree")
    cfg.require("expansion_ratio", (4,), "must be 4: transformers' MPT hard-codes a 4x MLP")
    cfg.require("logit_scale", (None,), "(a scale on the logits) is not expressible and transformers' MPT ignores it")
    d, nh = cfg.integer("d_model"), cfg.integer("n_heads")
    attention = {"n_heads": nh, "qkv_bias": False, "out_bias": False}
    if attn["softmax_scale"] is not None:
        attention["softmax_scale"] = float(attn["softmax_scale"])
    return {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": cfg.integer("n_layers"),
        "max_seq_len": cfg.integer("max_seq_len"), "dtype": dtype(cfg),
        "norm": {"kind": "layernorm", "eps": float(cfg["layer_norm_epsilon"]), "placement": "pre", "bias": False},
        "mlp": {"activation": "gelu", "d_ff": 4 * d, "bias": False},  # nn.GELU(approximate="none")
        # build_mpt_alibi_tensor: for power-of-two heads 2^(-8 h / n); for other counts the odd then even
        # slopes of the next power, which is the same list as BLOOM's rule
        "position": {"kind": "alibi", "max_bias": 8.0},
        "attention": attention,
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }


def mpt_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    d = spec.d_model
    table = {
        "norm_1.weight": "attn_norm.weight", "norm_2.weight": "mlp_norm.weight",
        "attn.Wqkv.weight": Rule(("attn.q.weight", "attn.k.weight", "attn.v.weight"), rows(d, d, d)),  # chunk(3)
        "attn.out_proj.weight": "attn.o.weight",
        "ffn.up_proj.weight": "mlp.up.weight", "ffn.down_proj.weight": "mlp.down.weight",
    }
    out = layers(spec.n_layers, "transformer.blocks.{i}.", table)
    out.update({"transformer.wte.weight": Rule(("embed.weight",)), "transformer.norm_f.weight": Rule(("final_norm.weight",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def bloom_config(spec) -> dict:
    # seq_length: BLOOM has no position table; bloom_spec reads the length back from it
    return {"vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "n_layer": spec.n_layers,
            "n_head": spec.attention.n_heads, "layer_norm_epsilon": spec.norm.eps, "seq_length": spec.max_seq_len,
            "apply_residual_connection_post_layernorm": False, "tie_word_embeddings": tied(spec),
            "initializer_range": spec.init.std, "hidden_dropout": 0.0, "attention_dropout": 0.0}


def mpt_config(spec) -> dict:
    a = spec.attention
    attn = {"attn_type": "multihead_attention", "alibi": True, "alibi_bias_max": 8, "clip_qkv": None, "qk_ln": False,
            "prefix_lm": False,  # attn_pdrop: 0 by default (and typed int in transformers 5)
            # None: the default 1/sqrt(head_dim), which mpt_spec leaves to the spec to derive
            "softmax_scale": None if a.softmax_scale == 1.0 / a.head_dim ** 0.5 else a.softmax_scale}
    return {"d_model": spec.d_model, "n_heads": a.n_heads, "n_layers": spec.n_layers, "expansion_ratio": 4,
            "max_seq_len": spec.max_seq_len, "vocab_size": spec.vocab_size, "layer_norm_epsilon": spec.norm.eps,
            "no_bias": True, "norm_type": "low_precision_layernorm", "logit_scale": None, "attn_config": attn,
            "tie_word_embeddings": tied(spec), "initializer_range": spec.init.std, "resid_pdrop": 0.0, "emb_pdrop": 0.0}


# embedding LayerNorm, ALiBi, fused per-head qkv, tanh-GELU, biases, tied head
BLOOM = Family("bloom", BLOOM_DEFAULTS, bloom_spec, bloom_tensors, aliases=(("", "transformer."),),
               to_config=bloom_config, architecture="BloomForCausalLM")
# bias-free LayerNorm and linears, ALiBi, Wqkv q | k | v, exact GELU, tied head
MPT = Family("mpt", MPT_DEFAULTS, mpt_spec, mpt_tensors, aliases=(("", "transformer."),),
             to_config=mpt_config, architecture="MptForCausalLM")
