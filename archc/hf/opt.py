"""OPT (Zhang et al. 2022; transformers models/opt).

Learned positions looked up at position + 2 (OPTLearnedPositionalEmbedding.offset; the table has
max_position_embeddings + 2 rows), LayerNorm (eps 1e-5), ReLU MLP (fc1/fc2), separate q/k/v/out
projections with biases (enable_bias), tied head. do_layer_norm_before true (all sizes but 350m):
pre-norm with a final norm (unless _remove_final_layer_norm); false (OPT-350m): post-norm, norm after
each residual add and no final norm. word_embed_proj_dim != hidden_size (OPT-350m's project_in/out)
is not expressible.
"""

from __future__ import annotations

from archc.hf.common import Cfg, Family, Rule, activation, dtype, hf_activation, layers, tied

OPT_DEFAULTS = {
    "vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072, "max_position_embeddings": 2048,
    "do_layer_norm_before": True, "_remove_final_layer_norm": False, "word_embed_proj_dim": None,
    "num_attention_heads": 12, "activation_function": "relu", "enable_bias": True,
    "layer_norm_elementwise_affine": True, "tie_word_embeddings": True, "init_std": 0.02,
}
_OFFSET = 2  # OPTLearnedPositionalEmbedding: "OPT is set up so that if padding_idx is specified then offset ... by 2"


def opt_spec(cfg: Cfg) -> dict:
    d = cfg.integer("hidden_size")
    if cfg.get("word_embed_proj_dim", d) != d:
        raise cfg.fail("word_embed_proj_dim", f"differs from hidden_size={d} (project_in/project_out layers around the "
                                              "stack), which the spec language cannot express")
    cfg.require("layer_norm_elementwise_affine", (True, None), "(LayerNorm without weight and bias) is not expressible")
    pre = bool(cfg["do_layer_norm_before"])
    max_pos = cfg.integer("max_position_embeddings")
    bias = bool(cfg["enable_bias"])
    return {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": cfg.integer("num_hidden_layers"),
        "max_seq_len": max_pos, "dtype": dtype(cfg),
        "norm": {"kind": "layernorm", "eps": 1e-5, "placement": "pre" if pre else "post",
                 "final": pre and not cfg["_remove_final_layer_norm"]},
        "mlp": {"activation": activation(cfg, "activation_function", gated=False), "d_ff": cfg.integer("ffn_dim"),
                "bias": bias},
        "position": {"kind": "learned", "offset": _OFFSET, "max_positions": max_pos + _OFFSET},
        "attention": {"n_heads": cfg.integer("num_attention_heads"), "qkv_bias": bias, "out_bias": bias},
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("init_std", 0.02))},
    }


def opt_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    table: dict = {
        # pre-norm: the norms feed the sublayers; post-norm: they follow the residual adds. The graph names both
        # attn_norm / mlp_norm, so the names map the same way.
        "self_attn_layer_norm.weight": "attn_norm.weight", "self_attn_layer_norm.bias": "attn_norm.bias",
        "final_layer_norm.weight": "mlp_norm.weight", "final_layer_norm.bias": "mlp_norm.bias",
        "self_attn.q_proj.weight": "attn.q.weight", "self_attn.k_proj.weight": "attn.k.weight",
        "self_attn.v_proj.weight": "attn.v.weight", "self_attn.out_proj.weight": "attn.o.weight",
        "fc1.weight": "mlp.up.weight", "fc2.weight": "mlp.down.weight",
    }
    if spec.attention.qkv_bias:
        table.update({f"self_attn.{p}_proj.bias": f"attn.{p}.bias" for p in "qkv"})
        table["self_attn.out_proj.bias"] = "attn.o.bias"
    if spec.mlp.bias:
        table.update({"fc1.bias": "mlp.up.bias", "fc2.bias": "mlp.down.bias"})
    out = layers(spec.n_layers, "model.decoder.layers.{i}.", table)
    out.update({"model.decoder.embed_tokens.weight": Rule(("embed.weight",)),
                "model.decoder.embed_positions.weight": Rule(("pos_embed.weight",))})
    if spec.norm.final:
        out["model.decoder.final_layer_norm.weight"] = Rule(("final_norm.weight",))
        out["model.decoder.final_layer_norm.bias"] = Rule(("final_norm.bias",))
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def opt_config(spec) -> dict:
    pre = spec.norm.placement.value == "pre"
    return {"vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "num_hidden_layers": spec.n_layers,
            "ffn_dim": spec.mlp.d_ff, "max_position_embeddings": spec.max_seq_len, "do_layer_norm_before": pre,
            "_remove_final_layer_norm": pre and not spec.norm.final, "word_embed_proj_dim": spec.d_model,
            "num_attention_heads": spec.attention.n_heads, "activation_function": hf_activation(spec),
            "enable_bias": spec.attention.qkv_bias, "layer_norm_elementwise_affine": True,
            "tie_word_embeddings": tied(spec), "init_std": spec.init.std, "dropout": 0.0, "attention_dropout": 0.0,
            "activation_dropout": 0.0, "layerdrop": 0.0}


# facebook/opt-* checkpoints were saved from OPTModel ("decoder.*"); older ones without any prefix
# learned positions with offset 2, ReLU, biases; do_layer_norm_before false -> post-norm, no final norm
OPT = Family("opt", OPT_DEFAULTS, opt_spec, opt_tensors, aliases=(("decoder.", "model.decoder."), ("", "model.decoder.")),
             to_config=opt_config, architecture="OPTForCausalLM")
