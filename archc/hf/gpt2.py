"""GPT-2 layout families: gpt2 and gpt_bigcode (StarCoder/SantaCoder).

Both: pre-norm LayerNorm, learned absolute positions (wpe), fused c_attn, biases everywhere, tied
head by default. GPT-2 stores its projections as Conv1D ([in, out], transposed against
nn.Linear); GPT-BigCode uses nn.Linear and adds multi-query attention, where c_attn's rows are
q | k | v with one K/V head; without multi_query its c_attn rows are per-head interleaved
[head][q|k|v][head_dim].
"""

from __future__ import annotations

from archc.hf.common import Cfg, Family, Rule, activation, dtype, hf_activation, layers, per_head, rows, then, tied, transpose

GPT2_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "add_cross_attention": False, "tie_word_embeddings": True,
}
BIGCODE_DEFAULTS = dict(GPT2_DEFAULTS, activation_function="gelu_pytorch_tanh", multi_query=True,
                        attention_softmax_in_fp32=True, scale_attention_softmax_in_fp32=True)


def _spec(cfg: Cfg, kv_heads: int) -> dict:
    cfg.require("add_cross_attention", (False, None), "(cross-attention) is not expressible in a decoder-only spec")
    d, nh = cfg.integer("n_embd"), cfg.integer("n_head")
    attention = {"n_heads": nh, "kv_heads": kv_heads, "qkv_bias": True, "out_bias": True}
    if not cfg["scale_attn_weights"]:
        attention["softmax_scale"] = 1.0  # scores are not divided by sqrt(head_dim)
    return {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": cfg.integer("n_layer"),
        "max_seq_len": cfg.integer("n_positions"), "dtype": dtype(cfg),
        "norm": {"kind": "layernorm", "eps": float(cfg["layer_norm_epsilon"]), "placement": "pre"},
        "mlp": {"activation": activation(cfg, "activation_function", gated=False), "d_ff": cfg.get("n_inner") or 4 * d,
                "bias": True},
        "position": {"kind": "learned", "max_positions": cfg.integer("n_positions")},
        "attention": attention,
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }


def gpt2_spec(cfg: Cfg) -> dict:
    cfg.require("scale_attn_by_inverse_layer_idx", (False, None),
                "(scores divided by layer index + 1) is not expressible; the spec has one softmax_scale for all layers")
    return _spec(cfg, kv_heads=cfg.integer("n_head"))


def bigcode_spec(cfg: Cfg) -> dict:
    return _spec(cfg, kv_heads=1 if cfg["multi_query"] else cfg.integer("n_head"))


def _head_and_embeddings(spec) -> dict[str, Rule]:
    out = {
        "transformer.wte.weight": Rule(("embed.weight",)), "transformer.wpe.weight": Rule(("pos_embed.weight",)),
        "transformer.ln_f.weight": Rule(("final_norm.weight",)), "transformer.ln_f.bias": Rule(("final_norm.bias",)),
    }
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def gpt2_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    d = spec.d_model
    qkv = ("attn.q.weight", "attn.k.weight", "attn.v.weight")
    table = {
        "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
        "ln_2.weight": "mlp_norm.weight", "ln_2.bias": "mlp_norm.bias",
        # Conv1D: weight [in, out]; c_attn's output columns are q | k | v
        "attn.c_attn.weight": Rule(qkv, then(transpose, rows(d, d, d))),
        "attn.c_attn.bias": Rule(("attn.q.bias", "attn.k.bias", "attn.v.bias"), rows(d, d, d)),
        "attn.c_proj.weight": Rule(("attn.o.weight",), transpose), "attn.c_proj.bias": "attn.o.bias",
        "mlp.c_fc.weight": Rule(("mlp.up.weight",), transpose), "mlp.c_fc.bias": "mlp.up.bias",
        "mlp.c_proj.weight": Rule(("mlp.down.weight",), transpose), "mlp.c_proj.bias": "mlp.down.bias",
    }
    return layers(spec.n_layers, "transformer.h.{i}.", table) | _head_and_embeddings(spec)


def bigcode_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    a = spec.attention
    if a.kv_heads == 1:
        split = rows(a.n_heads * a.head_dim, a.head_dim, a.head_dim)
    else:
        split = per_head(a.n_heads, a.head_dim)
    table = {
        "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
        "ln_2.weight": "mlp_norm.weight", "ln_2.bias": "mlp_norm.bias",
        "attn.c_attn.weight": Rule(("attn.q.weight", "attn.k.weight", "attn.v.weight"), split),
        "attn.c_attn.bias": Rule(("attn.q.bias", "attn.k.bias", "attn.v.bias"), split),
        "attn.c_proj.weight": "attn.o.weight", "attn.c_proj.bias": "attn.o.bias",
        "mlp.c_fc.weight": "mlp.up.weight", "mlp.c_fc.bias": "mlp.up.bias",
        "mlp.c_proj.weight": "mlp.down.weight", "mlp.c_proj.bias": "mlp.down.bias",
    }
    return layers(spec.n_layers, "transformer.h.{i}.", table) | _head_and_embeddings(spec)


def _config(spec, tanh_gelu: str) -> dict:
    a = spec.attention
    default_scale = a.softmax_scale == 1.0 / a.head_dim ** 0.5
    return {
        "vocab_size": spec.vocab_size, "n_positions": spec.max_seq_len, "n_embd": spec.d_model, "n_layer": spec.n_layers,
        "n_head": a.n_heads, "n_inner": spec.mlp.d_ff,
        "activation_function": tanh_gelu if spec.mlp.activation.value == "gelu_tanh" else hf_activation(spec),
        "layer_norm_epsilon": spec.norm.eps, "initializer_range": spec.init.std,
        # a softmax scale of 1 is scale_attn_weights false; any other non-default scale re-imports as the default
        "scale_attn_weights": not (a.softmax_scale == 1.0 and not default_scale),
        "tie_word_embeddings": tied(spec), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    }


def gpt2_config(spec) -> dict:
    return _config(spec, "gelu_new")


def bigcode_config(spec) -> dict:
    return dict(_config(spec, "gelu_pytorch_tanh"), multi_query=spec.attention.kv_heads == 1)


_ALIASES = (("", "transformer."),)  # the original GPT-2 checkpoints were saved from GPT2Model: no prefix
_IGNORE = (r"\.attn\.bias$", r"\.attn\.masked_bias$")  # causal-mask buffers of older versions
# LayerNorm pre-norm, learned positions, Conv1D weights (transposed), fused c_attn, tied head
GPT2 = Family("gpt2", GPT2_DEFAULTS, gpt2_spec, gpt2_tensors, aliases=_ALIASES, ignore=_IGNORE,
              to_config=gpt2_config, architecture="GPT2LMHeadModel")
# GPT-2 layout with nn.Linear; multi_query -> MQA (c_attn rows q | k | v)
GPT_BIGCODE = Family("gpt_bigcode", BIGCODE_DEFAULTS, bigcode_spec, bigcode_tensors, aliases=_ALIASES, ignore=_IGNORE,
                     to_config=bigcode_config, architecture="GPTBigCodeForCausalLM")
