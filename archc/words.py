"""Display words for the axis values and the number formats, shared by `archc compare`, `archc diff`,
`archc draw`, `archc show` and the report renderers.

One table per axis, keyed by the spec's enum members, which the spec and the graph's typed node
settings (archc.components) both hold; a value without words raises instead of printing raw. Adding a value to an axis enum means adding its words here;
tests/spec/test_words.py fails until every member has them.
"""

from __future__ import annotations

from archc.spec import (
    Activation,
    AttentionKernel,
    MaskKind,
    NormKind,
    NormPlacement,
    NormScale,
    OptimizerKind,
    PositionKind,
    Sharing,
    Tokenizer,
)

NORM = {NormKind.layernorm: "LayerNorm", NormKind.rmsnorm: "RMSNorm"}
NORM_PLACEMENT = {
    NormPlacement.pre: "pre-norm", NormPlacement.post: "post-norm", NormPlacement.sandwich: "sandwich (pre + post)",
    NormPlacement.deepnorm: "DeepNorm",
}
ACTIVATION = {
    Activation.gelu: "GELU", Activation.gelu_tanh: "GELU (tanh)", Activation.relu: "ReLU", Activation.silu: "SiLU",
    Activation.swiglu: "SwiGLU", Activation.geglu: "GeGLU", Activation.geglu_tanh: "GeGLU (tanh)", Activation.reglu: "ReGLU",
}
# every position kind but rope, whose words carry its settings (archc.compare.position_scheme)
POSITION = {
    PositionKind.alibi: "ALiBi", PositionKind.glm2d: "2D (position + block id)", PositionKind.learned: "learned absolute",
    PositionKind.sinusoidal: "sinusoidal", PositionKind.none: "none (NoPE)",
}
SHARING = {Sharing.mha: "multi-head", Sharing.mqa: "multi-query", Sharing.gqa: "grouped-query"}
MASK = {MaskKind.causal: "causal", MaskKind.prefix: "prefix (bidirectional context, causal after)"}
KERNEL = {
    AttentionKernel.default: "default", AttentionKernel.memory_efficient: "memory-efficient",
    AttentionKernel.flash: "flash", AttentionKernel.math: "math (reference)",
}
TOKENIZER = {
    Tokenizer.sentencepiece: "SentencePiece", Tokenizer.sentencepiece_bpe: "SentencePiece BPE",
    Tokenizer.sentencepiece_unigram: "SentencePiece unigram", Tokenizer.byte_level_bpe: "byte-level BPE",
    Tokenizer.wordpiece: "WordPiece", Tokenizer.bpe: "BPE", Tokenizer.unspecified: "",
}
OPTIMIZER = {OptimizerKind.adamw: "AdamW", OptimizerKind.adam: "Adam", OptimizerKind.adafactor: "Adafactor"}


def norm(kind: NormKind | str, bias: bool, scale: NormScale | str) -> str:
    """'LayerNorm', 'LayerNorm, no bias', 'RMSNorm with bias, (1 + w) scale': the kind, and its bias
    and scale where they differ from the kind's usual form."""
    kind, scale = NormKind(kind), NormScale(scale)
    words = NORM[kind]
    if kind is NormKind.layernorm and not bias:
        words += ", no bias"
    elif kind is not NormKind.layernorm and bias:
        words += " with bias"
    if scale is NormScale.one_plus_weight:
        words += ", (1 + w) scale"
    return words


def sharing(n_heads: int, kv_heads: int) -> str:
    """The K/V sharing read off the head counts."""
    if kv_heads == n_heads:
        return SHARING[Sharing.mha]
    if kv_heads == 1:
        return SHARING[Sharing.mqa]
    return SHARING[Sharing.gqa]


# --------------------------------------------------------------------------------------------
# Numbers


def human(n: float, unit: str = "") -> str:
    """6738415616 -> '6.74 B' (counts) or, with a unit, 14287896576 -> '14.3 GFLOP'; three significant digits."""
    prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if unit else ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
    for div, prefix in prefixes:
        if abs(n) >= div:
            return f"{n / div:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".strip()


def human_bytes(n: float) -> str:
    """524288 -> '512 KiB'; binary prefixes, three significant digits."""
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{int(n)} B"


def sci(x: float) -> str:
    """3e-4 rather than 0.0003: learning rates as papers write them."""
    mantissa, exponent = f"{x:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
