"""The comparison table of the source material (../shared/ARCHITECTURES.md), regenerated from specs.

One column per architecture, one row per axis, named as in that table, plus size and cost rows.
Axis cells are read from the resolved spec (the table compares spec axes); cost cells from the
compiled graph through archc.cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc.cost import cost
from archc.graph import ComponentGraph
from archc.spec import Spec

NORM = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
ACT = {"gelu": "GELU", "gelu_tanh": "GELU (tanh)", "relu": "ReLU", "silu": "SiLU", "swiglu": "SwiGLU",
       "geglu": "GeGLU", "geglu_tanh": "GeGLU (tanh)", "reglu": "ReGLU"}
TOKENIZER = {"sentencepiece": "SentencePiece", "sentencepiece_bpe": "SentencePiece BPE", "sentencepiece_unigram": "SentencePiece unigram",
             "byte_level_bpe": "byte-level BPE", "wordpiece": "WordPiece", "bpe": "BPE",
             "unspecified": ""}
OPTIMIZER = {"adamw": "AdamW", "adam": "Adam", "adafactor": "Adafactor"}
KERNEL = {"default": "default", "memory_efficient": "memory-efficient", "flash": "flash", "math": "math (reference)"}


def human(n: float, unit: str = "") -> str:
    """6738415616 -> '6.74 B' (counts) or, with a unit, 14287896576 -> '14.3 GFLOP'; three significant digits."""
    prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if unit else ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
    for div, prefix in prefixes:
        if abs(n) >= div:
            return f"{n / div:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".strip()


def sci(x: float) -> str:
    """3e-4 rather than 0.0003: learning rates as papers write them."""
    mantissa, exponent = f"{x:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def human_bytes(n: int) -> str:
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n} B"


def norm_kind(s: Spec) -> str:
    n = s.norm
    words = NORM[n.kind.value]
    if n.kind.value == "layernorm" and not n.bias:
        words += ", no bias"
    elif n.kind.value != "layernorm" and n.bias:
        words += " with bias"
    if n.scale.value == "one_plus_weight":
        words += ", (1 + w) scale"
    return words


def norm_placement(s: Spec) -> str:
    n = s.norm
    words = {"pre": "pre-norm", "post": "post-norm", "sandwich": "sandwich (pre + post)"}.get(n.placement.value)
    if n.placement.value == "deepnorm":
        words = f"DeepNorm (post, α {n.deepnorm_alpha:.3g})"
    default_final = n.placement.value in ("pre", "sandwich")
    if n.final != default_final:
        words += ", final norm" if n.final else ", no final norm"
    return words


def mlp_activation(s: Spec) -> str:
    ratio = s.mlp.d_ff / s.d_model
    return f"{ACT[s.mlp.activation.value]}, h → {ratio:.3g}h → h"


def position_scheme(s: Spec) -> str:
    p = s.position
    k = p.kind.value
    if k == "rope":
        words = f"RoPE (θ {p.theta:g}"
        if p.rotary_fraction < 1:
            words += f", {p.rotary_fraction:.0%} of head dims"
        if p.style.value == "interleaved":
            words += ", interleaved"
        return words + ")"
    return {"alibi": "ALiBi", "glm2d": "2D (position + block id)", "learned": "learned absolute",
            "sinusoidal": "sinusoidal", "none": "none (NoPE)"}[k]


def attention_sharing(s: Spec) -> str:
    a = s.attention
    if a.sharing.value == "mha":
        return f"multi-head ({a.n_heads} heads)"
    name = "multi-query" if a.sharing.value == "mqa" else "grouped-query"
    return f"{name} ({a.n_heads} heads, {a.kv_heads} K/V)"


def attention_mask(s: Spec) -> str:
    a = s.attention
    words = "prefix (bidirectional context, causal after)" if a.mask.value == "prefix" else "causal"
    if a.sliding_window:
        words += f", sliding window {a.sliding_window}"
    return words


def residual_layout(s: Spec) -> str:
    r = s.residual
    if r.layout.value == "parallel":
        return f"parallel, {'one shared norm' if r.parallel_norms.value == 'shared' else 'separate norms'}"
    return "sequential"


def embeddings(s: Spec) -> str:
    e = s.embedding
    parts = [e.output.value]
    if e.norm.value != "none":
        parts.append(f"{NORM[e.norm.value]} after the embedding")
    if s.embedding_multiplier != 1.0:
        parts.append("× √d" if e.multiplier == "sqrt_d_model" else f"× {s.embedding_multiplier:g}")
    if e.head_bias:
        parts.append("head bias")
    return ", ".join(parts)


def vocabulary(s: Spec) -> str:
    tok = TOKENIZER[s.tokenizer.value]
    return f"{s.vocab_size:,} {tok}".strip()


def biases(s: Spec) -> str:
    parts = []
    if s.attention.qkv_bias:
        parts.append("q/k/v")
    if s.attention.out_bias:
        parts.append("attention out")
    if s.mlp.bias:
        parts.append("MLP")
    if s.norm.bias:
        parts.append("norms")
    if s.embedding.head_bias:
        parts.append("head")
    return ", ".join(parts) if parts else "none"


def training_recipe(s: Spec) -> str:
    o, sch = s.training.optimizer, s.training.schedule
    words = f"{OPTIMIZER[o.kind.value]} (lr {sci(o.lr)}), {sch.kind.value}"
    if sch.warmup_steps:
        words += f" with {sch.warmup_steps} warm-up steps"
    return words


def attention_kernel(s: Spec) -> str:
    return KERNEL[s.attention.kernel.value]


def size(s: Spec) -> str:
    return f"{s.n_layers} layers, d {s.d_model}, {s.dtype.value}"


AXES = [
    ("size", size),
    ("norm kind", norm_kind),
    ("norm placement", norm_placement),
    ("MLP activation", mlp_activation),
    ("position scheme", position_scheme),
    ("attention sharing", attention_sharing),
    ("attention mask", attention_mask),
    ("residual layout", residual_layout),
    ("embeddings", embeddings),
    ("vocabulary", vocabulary),
    ("biases", biases),
    ("training recipe", training_recipe),
    ("attention kernel", attention_kernel),
]


@dataclass
class Comparison:
    names: list[str]
    sources: list[str]
    seq_len: int
    rows: list[tuple[str, list[str]]]  # (axis, one cell per architecture), as displayed
    raw: list[dict]  # per architecture: the exact cost numbers


def comparison(specs: list[Spec], graphs: list[ComponentGraph], sources: list[str], seq_len: int = 2048) -> Comparison:
    rows = [(name, [fn(s) for s in specs]) for name, fn in AXES]
    costs = [cost(g) for g in graphs]
    raw = [{"params": c.params, "flops_per_token": c.flops_per_token(seq_len),
            "kv_cache_bytes_per_token": c.kv_bytes_per_token(g.spec.dtype.value)} for c, g in zip(costs, graphs)]
    rows.append(("parameters", [human(r["params"]) for r in raw]))
    rows.append((f"FLOPs per token (context {seq_len})", [human(r["flops_per_token"], "FLOP") for r in raw]))
    rows.append(("KV cache per token", [human_bytes(r["kv_cache_bytes_per_token"]) for r in raw]))
    return Comparison([s.name for s in specs], sources, seq_len, rows, raw)


def to_json_data(c: Comparison) -> dict:
    return {
        "schema": "archc-compare/1",
        "seq_len": c.seq_len,
        "architectures": [{"name": n, "source": src, **raw} for n, src, raw in zip(c.names, c.sources, c.raw)],
        "rows": [{"axis": axis, "values": cells} for axis, cells in c.rows],
    }
