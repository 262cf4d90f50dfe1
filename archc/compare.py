"""The architecture comparison table, regenerated from specs (the README's "Compare" section).

One column per architecture, one row per axis, plus size and cost rows.
Axis cells are read from the resolved spec (the table compares spec axes); cost cells from the
compiled graph through archc.cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from archc import words
from archc.cost import cost
from archc.graph import ComponentGraph
from archc.spec import NormKind, NormPlacement, Spec
from archc.words import human, human_bytes, sci


def norm_kind(s: Spec) -> str:
    return words.norm(s.norm.kind, s.norm.bias, s.norm.scale)


def norm_placement(s: Spec) -> str:
    n = s.norm
    text = words.NORM_PLACEMENT[n.placement]
    if n.placement is NormPlacement.deepnorm:
        text = f"{text} (post, α {n.deepnorm_alpha:.3g})"
    default_final = n.placement in (NormPlacement.pre, NormPlacement.sandwich)
    if n.final != default_final:
        text += ", final norm" if n.final else ", no final norm"
    return text


def mlp_activation(s: Spec) -> str:
    ratio = s.mlp.d_ff / s.d_model
    return f"{words.ACTIVATION[s.mlp.activation]}, h → {ratio:.3g}h → h"


def position_scheme(s: Spec) -> str:
    p = s.position
    k = p.kind.value
    if k == "rope":
        text = f"RoPE (θ {p.theta:g}"
        if p.rotary_fraction < 1:
            text += f", {p.rotary_fraction:.0%} of head dims"
        if p.style.value == "interleaved":
            text += ", interleaved"
        return text + ")"
    return words.POSITION[p.kind]


def attention_sharing(s: Spec) -> str:
    a = s.attention
    if a.sharing.value == "mha":
        return f"{words.SHARING[a.sharing]} ({a.n_heads} heads)"
    return f"{words.SHARING[a.sharing]} ({a.n_heads} heads, {a.kv_heads} K/V)"


def attention_mask(s: Spec) -> str:
    a = s.attention
    text = words.MASK[a.mask]
    if a.sliding_window:
        text += f", sliding window {a.sliding_window}"
    return text


def residual_layout(s: Spec) -> str:
    r = s.residual
    if r.layout.value == "parallel":
        return f"parallel, {'one shared norm' if r.parallel_norms.value == 'shared' else 'separate norms'}"
    return "sequential"


def embeddings(s: Spec) -> str:
    e = s.embedding
    parts = [e.output.value]
    if e.norm.value != "none":
        parts.append(f"{words.NORM[NormKind(e.norm.value)]} after the embedding")
    if s.embedding_multiplier != 1.0:
        parts.append("× √d" if e.multiplier == "sqrt_d_model" else f"× {s.embedding_multiplier:g}")
    if e.head_bias:
        parts.append("head bias")
    return ", ".join(parts)


def vocabulary(s: Spec) -> str:
    tok = words.TOKENIZER[s.tokenizer]
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
    text = f"{words.OPTIMIZER[o.kind]} (lr {sci(o.lr)}), {sch.kind.value}"
    if sch.warmup_steps:
        text += f" with {sch.warmup_steps} warm-up steps"
    return text


def attention_kernel(s: Spec) -> str:
    return words.KERNEL[s.attention.kernel]


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
            "kv_cache_bytes_per_token": c.kv_bytes_per_token(g.spec.dtype)} for c, g in zip(costs, graphs)]
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
