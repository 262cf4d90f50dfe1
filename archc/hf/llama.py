"""LLaMA-layout families: llama, mistral, qwen2, gemma (transformers models/<type>/modeling_<type>.py).

All four: pre-norm RMSNorm, gated MLP down(act(gate(x)) * up(x)), half-style RoPE on the full
head_dim, separate q/k/v/o projections, GQA through num_key_value_heads. They differ in biases
(llama: attention_bias on q, k, v and o; qwen2: q, k, v only), sliding windows (mistral: every
layer; qwen2: per layer_types), and Gemma's (1 + w) RMSNorm, sqrt(hidden_size) embedding scale,
explicit head_dim and tanh-GELU gate.
"""

from __future__ import annotations

from archc.hf.common import (Cfg, Family, Rule, activation, dtype, hf_activation, layers, rope, rope_config, rotary_rows,
                             tied)

_COMMON_DEFAULTS = {
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False, "rope_theta": 10000.0,
    "num_key_value_heads": None, "head_dim": None, "initializer_range": 0.02,
}
LLAMA_DEFAULTS = dict(_COMMON_DEFAULTS, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, max_position_embeddings=2048, attention_bias=False, mlp_bias=False)
MISTRAL_DEFAULTS = dict(_COMMON_DEFAULTS, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32, sliding_window=4096)
QWEN2_DEFAULTS = dict(_COMMON_DEFAULTS, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                      use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None)
GEMMA_DEFAULTS = dict(_COMMON_DEFAULTS, vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh",
                      max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
                      use_bidirectional_attention=None)


def _base(cfg: Cfg, *, qkv_bias: bool, out_bias: bool, mlp_bias: bool) -> dict:
    d, nh = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    head_dim = cfg.get("head_dim") or d // nh
    theta, fraction = rope(cfg)
    if fraction != 1.0:
        raise cfg.fail("partial_rotary_factor", f"is ignored by transformers' {cfg.model_type} (it rotates the whole "
                                                "head); remove it or set 1.0", value=fraction)
    return {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": cfg.integer("num_hidden_layers"),
        "max_seq_len": cfg.integer("max_position_embeddings"), "dtype": dtype(cfg),
        "norm": {"kind": "rmsnorm", "eps": float(cfg["rms_norm_eps"]), "placement": "pre"},
        "mlp": {"activation": activation(cfg, "hidden_act", gated=True), "d_ff": cfg.integer("intermediate_size"),
                "bias": mlp_bias},
        "position": {"kind": "rope", "theta": theta, "style": "half"},
        "attention": {"n_heads": nh, "kv_heads": cfg.get("num_key_value_heads") or nh, "head_dim": head_dim,
                      "qkv_bias": qkv_bias, "out_bias": out_bias},
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }


def llama_spec(cfg: Cfg) -> dict:
    bias = bool(cfg["attention_bias"])
    return _base(cfg, qkv_bias=bias, out_bias=bias, mlp_bias=bool(cfg["mlp_bias"]))


def mistral_spec(cfg: Cfg) -> dict:
    spec = _base(cfg, qkv_bias=False, out_bias=False, mlp_bias=False)
    if cfg["sliding_window"] is not None:  # MistralModel masks with the window on every layer when set
        spec["attention"]["sliding_window"] = cfg.integer("sliding_window")
    return spec


def qwen2_spec(cfg: Cfg) -> dict:
    spec = _base(cfg, qkv_bias=True, out_bias=False, mlp_bias=False)
    window = cfg["sliding_window"] if cfg["use_sliding_window"] else None  # Qwen2Config.__post_init__
    types = cfg["layer_types"] or [
        "sliding_attention" if window is not None and i >= cfg["max_window_layers"] else "full_attention"
        for i in range(spec["n_layers"])
    ]
    if set(types) - {"full_attention", "sliding_attention"}:
        raise cfg.fail("layer_types", "has layer types other than full_attention / sliding_attention")
    if len(set(types)) > 1:
        raise cfg.fail("layer_types", "mixes sliding and full attention layers (max_window_layers); the spec "
                                      "language has one sliding_window for all layers")
    if types and types[0] == "sliding_attention":
        if window is None:
            raise cfg.fail("sliding_window", "is null but layer_types asks for sliding attention")
        spec["attention"]["sliding_window"] = int(window)
    return spec


def gemma_spec(cfg: Cfg) -> dict:
    if cfg["use_bidirectional_attention"]:
        raise cfg.fail("use_bidirectional_attention", "(no causal mask) is not expressible; the spec language has "
                                                      "causal and prefix masks")
    if cfg["hidden_act"] == "gelu":  # GemmaConfig.__post_init__: legacy 'gelu' means the tanh approximation
        cfg = Cfg(dict(cfg.data, hidden_act="gelu_pytorch_tanh"), cfg.defaults, cfg.source)
    bias = bool(cfg["attention_bias"])
    spec = _base(cfg, qkv_bias=bias, out_bias=bias, mlp_bias=False)
    spec["norm"]["scale"] = "one_plus_weight"  # GemmaRMSNorm: n(x) * (1 + w)
    # GemmaTextScaledWordEmbedding: embeddings * sqrt(hidden_size), a float32 scalar cast to the weight dtype
    spec["embedding"]["multiplier"] = "sqrt_d_model"
    return spec


def llama_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    a, m = spec.attention, spec.mlp
    table: dict = {
        "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "mlp_norm.weight",
        "self_attn.q_proj.weight": Rule(("attn.q.weight",), rotary_rows(spec, "half", which="q")),
        "self_attn.k_proj.weight": Rule(("attn.k.weight",), rotary_rows(spec, "half", which="k")),
        "self_attn.v_proj.weight": "attn.v.weight", "self_attn.o_proj.weight": "attn.o.weight",
        "mlp.gate_proj.weight": "mlp.gate.weight", "mlp.up_proj.weight": "mlp.up.weight",
        "mlp.down_proj.weight": "mlp.down.weight",
    }
    if a.qkv_bias:
        table.update({f"self_attn.{p}_proj.bias": Rule((f"attn.{p}.bias",), rotary_rows(spec, "half", which=p) if p != "v" else None)
                      for p in "qkv"})
    if a.out_bias:
        table["self_attn.o_proj.bias"] = "attn.o.bias"
    if m.bias:
        table.update({f"mlp.{p}_proj.bias": f"mlp.{p}.bias" for p in ("gate", "up", "down")})
    out = layers(spec.n_layers, "model.layers.{i}.", table)
    out["model.embed_tokens.weight"] = Rule(("embed.weight",))
    out["model.norm.weight"] = Rule(("final_norm.weight",))
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def _base_config(spec) -> dict:
    a, m = spec.attention, spec.mlp
    return {
        "vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "intermediate_size": m.d_ff,
        "num_hidden_layers": spec.n_layers, "num_attention_heads": a.n_heads, "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim, "max_position_embeddings": spec.max_seq_len, "rms_norm_eps": spec.norm.eps,
        "hidden_act": hf_activation(spec), "tie_word_embeddings": tied(spec), **rope_config(spec),
        "initializer_range": spec.init.std, "attention_dropout": 0.0,
    }


def llama_config(spec) -> dict:
    return dict(_base_config(spec), attention_bias=spec.attention.qkv_bias, mlp_bias=spec.mlp.bias)


def mistral_config(spec) -> dict:
    return dict(_base_config(spec), sliding_window=spec.attention.sliding_window)


def qwen2_config(spec) -> dict:
    window = spec.attention.sliding_window
    kind = "full_attention" if window is None else "sliding_attention"
    return dict(_base_config(spec), use_sliding_window=window is not None, sliding_window=window, max_window_layers=0,
                layer_types=[kind] * spec.n_layers)


def gemma_config(spec) -> dict:
    out = dict(_base_config(spec), attention_bias=spec.attention.qkv_bias)
    if spec.mlp.activation.value == "geglu":  # Gemma reads hidden_act "gelu" as the tanh GELU; the exact one is:
        out["hidden_act"] = "gelu_python"
    return out


_IGNORE = (r"\.rotary_emb\.inv_freq$",)
_BASE = (("", "model."),)  # checkpoints saved from the base model (LlamaModel, ...) have no "model." prefix
# RMSNorm pre-norm, SwiGLU, RoPE (half), GQA; attention_bias -> q/k/v/o biases, mlp_bias
LLAMA = Family("llama", LLAMA_DEFAULTS, llama_spec, llama_tensors, aliases=_BASE, ignore=_IGNORE,
               to_config=llama_config, architecture="LlamaForCausalLM", rope_style="half")
# LLaMA layout + sliding_window on every layer
MISTRAL = Family("mistral", MISTRAL_DEFAULTS, mistral_spec, llama_tensors, aliases=_BASE, ignore=_IGNORE,
                 to_config=mistral_config, architecture="MistralForCausalLM", rope_style="half")
# LLaMA layout + q/k/v biases; sliding window only when it covers all layers
QWEN2 = Family("qwen2", QWEN2_DEFAULTS, qwen2_spec, llama_tensors, aliases=_BASE, ignore=_IGNORE,
               to_config=qwen2_config, architecture="Qwen2ForCausalLM", rope_style="half")
# (1 + w) RMSNorm, GeGLU (tanh), embeddings x sqrt(d_model), explicit head_dim, tied head
GEMMA = Family("gemma", GEMMA_DEFAULTS, gemma_spec, llama_tensors, aliases=_BASE, ignore=_IGNORE,
               to_config=gemma_config, architecture="GemmaForCausalLM", rope_style="half")
