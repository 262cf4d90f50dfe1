"""Partial-rotary LayerNorm families: gpt_neox (Pythia), gptj, phi, stablelm.

GPT-NeoX: parallel residual with two norms (x + attn(ln1(x)) + mlp(ln2(x))) or sequential when
use_parallel_residual is false; fused query_key_value, per-head interleaved [head][q|k|v][hd];
half-style RoPE on the first int(head_dim * partial_rotary_factor) dims.
GPT-J: parallel residual with one shared norm; interleaved ("rotate every two") RoPE on the first
rotary_dim dims with theta 10000; biased head.
Phi: GPT-J-like shared-norm parallel block with half-style partial RoPE, biases everywhere, biased head.
StableLM: SwiGLU, partial half RoPE, parallel (shared norm) or sequential blocks.
"""

from __future__ import annotations

from archc.hf.common import (Cfg, Family, Rule, activation, dtype, hf_activation, layers, per_head, rope, rope_config,
                             rotary_fraction, rotary_rows, tied)

NEOX_DEFAULTS = {
    "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
    "intermediate_size": 24576, "hidden_act": "gelu", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False, "use_parallel_residual": True, "attention_bias": True, "initializer_range": 0.02,
}
GPTJ_DEFAULTS = {
    "vocab_size": 50400, "n_positions": 2048, "n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64,
    "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
PHI_DEFAULTS = {
    "vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "gelu_new", "max_position_embeddings": 2048,
    "layer_norm_eps": 1e-5, "tie_word_embeddings": False, "qk_layernorm": False, "initializer_range": 0.02,
}
STABLELM_DEFAULTS = {
    "vocab_size": 50304, "intermediate_size": 6912, "hidden_size": 2560, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
    "layer_norm_eps": 1e-5, "tie_word_embeddings": False, "use_qkv_bias": False, "qk_layernorm": False,
    "use_parallel_residual": False, "initializer_range": 0.02,
}


def _frame(cfg: Cfg, d: int, n_layers: int, max_seq: int, eps: float) -> dict:
    return {
        "vocab_size": cfg.integer("vocab_size"), "d_model": d, "n_layers": n_layers, "max_seq_len": max_seq,
        "dtype": dtype(cfg), "norm": {"kind": "layernorm", "eps": float(eps), "placement": "pre"},
        "embedding": {"output": "tied" if cfg["tie_word_embeddings"] else "untied"},
        "init": {"std": float(cfg.get("initializer_range", 0.02))},
    }


def _half_rope_frame(cfg: Cfg, **rope_keys) -> tuple[dict, int, dict]:
    """(frame, n_heads, position) of the configs that GPT-NeoX, Phi and StableLM share: sizes named
    hidden_size / num_attention_heads / num_hidden_layers, and half-style RoPE on the first
    int(head_dim * fraction) dims. The position section is returned for the caller to place, so the
    written spec keeps its field order (mlp, position, attention)."""
    d, nh = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    theta, fraction = rope(cfg, **rope_keys)
    spec = _frame(cfg, d, cfg.integer("num_hidden_layers"), cfg.integer("max_position_embeddings"), cfg["layer_norm_eps"])
    position = {"kind": "rope", "theta": theta, "style": "half", "rotary_fraction": rotary_fraction(cfg, d // nh, fraction)}
    return spec, nh, position


def neox_spec(cfg: Cfg) -> dict:
    spec, nh, position = _half_rope_frame(cfg, theta_key="rotary_emb_base", fraction_key="rotary_pct", default_fraction=0.25)
    bias = bool(cfg["attention_bias"])
    spec["mlp"] = {"activation": activation(cfg, "hidden_act", gated=False), "d_ff": cfg.integer("intermediate_size"),
                   "bias": True}
    spec["position"] = position
    spec["attention"] = {"n_heads": nh, "qkv_bias": bias, "out_bias": bias}
    if cfg["use_parallel_residual"]:
        spec["residual"] = {"layout": "parallel", "parallel_norms": "separate"}
    return spec


def gptj_spec(cfg: Cfg) -> dict:
    d, nh = cfg.integer("n_embd"), cfg.integer("n_head")
    hd = d // nh
    if cfg["rotary_dim"] is None:
        raise cfg.fail("rotary_dim", "is null; transformers' GPT-J then builds tables of width n_embd, which only fit "
                                     "one head; set rotary_dim")
    rd = cfg.integer("rotary_dim")
    if rd > hd or rd % 2:
        raise cfg.fail("rotary_dim", f"must be even and at most head_dim {hd}")
    spec = _frame(cfg, d, cfg.integer("n_layer"), cfg.integer("n_positions"), cfg["layer_norm_epsilon"])
    spec["mlp"] = {"activation": activation(cfg, "activation_function", gated=False), "d_ff": cfg.get("n_inner") or 4 * d,
                   "bias": True}
    # create_sinusoidal_positions: theta 10000 hard-coded; rotate_every_two pairs (2i, 2i+1)
    spec["position"] = {"kind": "rope", "theta": 10000.0, "style": "interleaved", "rotary_fraction": rd / hd}
    spec["attention"] = {"n_heads": nh}
    spec["residual"] = {"layout": "parallel", "parallel_norms": "shared"}
    spec["embedding"]["head_bias"] = True  # GPTJForCausalLM.lm_head = nn.Linear(n_embd, vocab) with bias
    return spec


def _qk_layernorm(cfg: Cfg) -> None:
    cfg.require("qk_layernorm", (False, None), "(LayerNorm on queries and keys) is not expressible in the spec language")


def phi_spec(cfg: Cfg) -> dict:
    _qk_layernorm(cfg)
    spec, nh, position = _half_rope_frame(cfg, default_fraction=0.5)
    spec["mlp"] = {"activation": activation(cfg, "hidden_act", gated=False), "d_ff": cfg.integer("intermediate_size"),
                   "bias": True}
    spec["position"] = position
    spec["attention"] = {"n_heads": nh, "kv_heads": cfg.get("num_key_value_heads") or nh, "qkv_bias": True, "out_bias": True}
    spec["residual"] = {"layout": "parallel", "parallel_norms": "shared"}
    spec["embedding"]["head_bias"] = True  # PhiForCausalLM.lm_head has a bias
    return spec


def stablelm_spec(cfg: Cfg) -> dict:
    _qk_layernorm(cfg)
    spec, nh, position = _half_rope_frame(cfg, default_fraction=0.25)
    spec["mlp"] = {"activation": activation(cfg, "hidden_act", gated=True), "d_ff": cfg.integer("intermediate_size"),
                   "bias": False}
    spec["position"] = position
    spec["attention"] = {"n_heads": nh, "kv_heads": cfg.get("num_key_value_heads") or nh,
                         "qkv_bias": bool(cfg["use_qkv_bias"]), "out_bias": False}
    if cfg["use_parallel_residual"]:
        spec["residual"] = {"layout": "parallel", "parallel_norms": "shared"}
    return spec


def _norm_names(spec, table_seq: tuple[str, str], table_par: tuple[str, ...]) -> dict:
    """Checkpoint norm names -> graph norm nodes, by the residual layout the spec resolved to."""
    out = {}
    if spec.residual.layout.value == "sequential":
        attn, mlp = table_seq
        out.update({f"{attn}.weight": "attn_norm.weight", f"{attn}.bias": "attn_norm.bias",
                    f"{mlp}.weight": "mlp_norm.weight", f"{mlp}.bias": "mlp_norm.bias"})
    elif spec.residual.parallel_norms.value == "shared":
        (shared,) = table_par
        out.update({f"{shared}.weight": "norm.weight", f"{shared}.bias": "norm.bias"})
    else:
        attn, mlp = table_par
        out.update({f"{attn}.weight": "attn_norm.weight", f"{attn}.bias": "attn_norm.bias",
                    f"{mlp}.weight": "mlp_norm.weight", f"{mlp}.bias": "mlp_norm.bias"})
    return out


def neox_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    a = spec.attention
    split = rotary_rows(spec, "half", per_head(a.n_heads, a.head_dim), which="qkv")  # view(..., n_heads, 3 * head_dim).chunk(3)
    table = _norm_names(spec, ("input_layernorm", "post_attention_layernorm"), ("input_layernorm", "post_attention_layernorm"))
    table.update({
        "attention.query_key_value.weight": Rule(("attn.q.weight", "attn.k.weight", "attn.v.weight"), split),
        "attention.dense.weight": "attn.o.weight",
        "mlp.dense_h_to_4h.weight": "mlp.up.weight", "mlp.dense_h_to_4h.bias": "mlp.up.bias",
        "mlp.dense_4h_to_h.weight": "mlp.down.weight", "mlp.dense_4h_to_h.bias": "mlp.down.bias",
    })
    if a.qkv_bias:
        table["attention.query_key_value.bias"] = Rule(("attn.q.bias", "attn.k.bias", "attn.v.bias"), split)
    if a.out_bias:
        table["attention.dense.bias"] = "attn.o.bias"
    out = layers(spec.n_layers, "gpt_neox.layers.{i}.", table)
    out.update({"gpt_neox.embed_in.weight": Rule(("embed.weight",)),
                "gpt_neox.final_layer_norm.weight": Rule(("final_norm.weight",)),
                "gpt_neox.final_layer_norm.bias": Rule(("final_norm.bias",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def gptj_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    table = {
        "ln_1.weight": "norm.weight", "ln_1.bias": "norm.bias",
        "attn.q_proj.weight": Rule(("attn.q.weight",), rotary_rows(spec, "interleaved", which="q")),
        "attn.k_proj.weight": Rule(("attn.k.weight",), rotary_rows(spec, "interleaved", which="k")),
        "attn.v_proj.weight": "attn.v.weight", "attn.out_proj.weight": "attn.o.weight",
        "mlp.fc_in.weight": "mlp.up.weight", "mlp.fc_in.bias": "mlp.up.bias",
        "mlp.fc_out.weight": "mlp.down.weight", "mlp.fc_out.bias": "mlp.down.bias",
    }
    out = layers(spec.n_layers, "transformer.h.{i}.", table)
    out.update({"transformer.wte.weight": Rule(("embed.weight",)), "transformer.ln_f.weight": Rule(("final_norm.weight",)),
                "transformer.ln_f.bias": Rule(("final_norm.bias",)), "lm_head.bias": Rule(("head.bias",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def phi_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    table = {"input_layernorm.weight": "norm.weight", "input_layernorm.bias": "norm.bias",
             "self_attn.dense.weight": "attn.o.weight", "self_attn.dense.bias": "attn.o.bias",
             "mlp.fc1.weight": "mlp.up.weight", "mlp.fc1.bias": "mlp.up.bias",
             "mlp.fc2.weight": "mlp.down.weight", "mlp.fc2.bias": "mlp.down.bias"}
    for p in "qkv":
        layout = rotary_rows(spec, "half", which=p) if p != "v" else None
        table[f"self_attn.{p}_proj.weight"] = Rule((f"attn.{p}.weight",), layout)
        table[f"self_attn.{p}_proj.bias"] = Rule((f"attn.{p}.bias",), layout)
    out = layers(spec.n_layers, "model.layers.{i}.", table)
    out.update({"model.embed_tokens.weight": Rule(("embed.weight",)),
                "model.final_layernorm.weight": Rule(("final_norm.weight",)),
                "model.final_layernorm.bias": Rule(("final_norm.bias",)), "lm_head.bias": Rule(("head.bias",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def stablelm_tensors(cfg: Cfg, spec) -> dict[str, Rule]:
    table = _norm_names(spec, ("input_layernorm", "post_attention_layernorm"), ("input_layernorm",))
    table.update({
        "self_attn.q_proj.weight": Rule(("attn.q.weight",), rotary_rows(spec, "half", which="q")),
        "self_attn.k_proj.weight": Rule(("attn.k.weight",), rotary_rows(spec, "half", which="k")),
        "self_attn.v_proj.weight": "attn.v.weight", "self_attn.o_proj.weight": "attn.o.weight",
        "mlp.gate_proj.weight": "mlp.gate.weight", "mlp.up_proj.weight": "mlp.up.weight",
        "mlp.down_proj.weight": "mlp.down.weight",
    })
    if spec.attention.qkv_bias:
        table.update({f"self_attn.{p}_proj.bias": Rule((f"attn.{p}.bias",), rotary_rows(spec, "half", which=p) if p != "v" else None)
                      for p in "qkv"})
    out = layers(spec.n_layers, "model.layers.{i}.", table)
    out.update({"model.embed_tokens.weight": Rule(("embed.weight",)), "model.norm.weight": Rule(("final_norm.weight",)),
                "model.norm.bias": Rule(("final_norm.bias",))})
    if spec.embedding.output.value == "untied":
        out["lm_head.weight"] = Rule(("head.weight",))
    return out


def _parallel(spec) -> bool:
    return spec.residual.layout.value == "parallel"


def _hf_sizes(spec) -> dict:
    a = spec.attention
    return {"vocab_size": spec.vocab_size, "hidden_size": spec.d_model, "num_hidden_layers": spec.n_layers,
            "num_attention_heads": a.n_heads, "intermediate_size": spec.mlp.d_ff, "hidden_act": hf_activation(spec),
            "max_position_embeddings": spec.max_seq_len, "layer_norm_eps": spec.norm.eps,
            "tie_word_embeddings": tied(spec), "initializer_range": spec.init.std, "attention_dropout": 0.0}


def neox_config(spec) -> dict:
    rope = rope_config(spec, partial=True)
    rope["rotary_pct"], rope["rotary_emb_base"] = rope.pop("partial_rotary_factor"), rope.pop("rope_theta")  # older names
    return dict(_hf_sizes(spec), **rope, use_parallel_residual=_parallel(spec), attention_bias=spec.attention.qkv_bias,
                hidden_dropout=0.0)


def gptj_config(spec) -> dict:
    a = spec.attention
    return {"vocab_size": spec.vocab_size, "n_positions": spec.max_seq_len, "n_embd": spec.d_model, "n_layer": spec.n_layers,
            "n_head": a.n_heads, "rotary_dim": spec.position.rotary_dim if spec.position.kind.value == "rope" else a.head_dim,
            "n_inner": spec.mlp.d_ff, "activation_function": hf_activation(spec), "layer_norm_epsilon": spec.norm.eps,
            "tie_word_embeddings": tied(spec), "initializer_range": spec.init.std,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def phi_config(spec) -> dict:
    return dict(_hf_sizes(spec), **rope_config(spec, partial=True), num_key_value_heads=spec.attention.kv_heads,
                qk_layernorm=False, resid_pdrop=0.0, embd_pdrop=0.0)


def stablelm_config(spec) -> dict:
    return dict(_hf_sizes(spec), **rope_config(spec, partial=True), num_key_value_heads=spec.attention.kv_heads,
                use_qkv_bias=spec.attention.qkv_bias, qk_layernorm=False, use_parallel_residual=_parallel(spec),
                hidden_dropout=0.0)


_ROTARY_BUFFERS = (r"\.rotary_emb\.inv_freq$",)
# parallel residual, two norms (or sequential); fused per-head qkv; partial half RoPE
GPT_NEOX = Family("gpt_neox", NEOX_DEFAULTS, neox_spec, neox_tensors,
                  # checkpoints before transformers 5 named the head embed_out; base-model checkpoints lack "gpt_neox."
                  aliases=(("embed_out.", "lm_head."), ("", "gpt_neox.")),
                  ignore=_ROTARY_BUFFERS + (r"\.attention\.bias$", r"\.attention\.masked_bias$"),
                  to_config=neox_config, architecture="GPTNeoXForCausalLM", rope_style="half")
# parallel residual, shared norm; interleaved partial RoPE (rotary_dim); biased head
GPTJ = Family("gptj", GPTJ_DEFAULTS, gptj_spec, gptj_tensors, aliases=(("", "transformer."),),
              ignore=(r"\.attn\.bias$", r"\.attn\.masked_bias$", r"\.embed_positions$"),
              to_config=gptj_config, architecture="GPTJForCausalLM", rope_style="interleaved")
# parallel residual, shared norm; partial half RoPE; biases everywhere incl. the head
PHI = Family("phi", PHI_DEFAULTS, phi_spec, phi_tensors, aliases=(("", "model."),), ignore=_ROTARY_BUFFERS,
             to_config=phi_config, architecture="PhiForCausalLM", rope_style="half")
# LayerNorm + SwiGLU; partial half RoPE; use_parallel_residual -> shared-norm parallel block
STABLELM = Family("stablelm", STABLELM_DEFAULTS, stablelm_spec, stablelm_tensors, aliases=(("", "model."),),
                  ignore=_ROTARY_BUFFERS,
                  to_config=stablelm_config, architecture="StableLmForCausalLM", rope_style="half")
