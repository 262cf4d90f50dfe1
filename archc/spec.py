"""The spec language: one pydantic model per section, one enum per axis.

A spec is validated once; everything that can be derived from it (head_dim, kv_heads and sharing,
rotary width, DeepNorm constants, softmax scale, embedding multiplier) is filled in by the
validators below, so every consumer reads resolved values and no consumer re-derives them.

Cross-field rules raise `SpecConflict`, which names every field involved and says what would fix
it; the loader turns it into one line pointing at the file and line of the first field.
"""

from __future__ import annotations

import difflib
import math
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from archc.dtypes import DType  # noqa: F401  (the spec's `dtype` field; one vocabulary for every dtype)

class SpecConflict(PydanticCustomError):
    """A cross-field rule failed. `fields` (comma-separated dotted paths) lets the loader point at a line."""

    def __new__(cls, fields: list[str], message: str):
        return super().__new__(cls, "spec_conflict", message, {"fields": ",".join(fields)})


# --------------------------------------------------------------------------------------------
# Enums: one per axis.


class NormKind(str, Enum):
    layernorm = "layernorm"  # Ba et al. 2016
    rmsnorm = "rmsnorm"  # Zhang & Sennrich 2019


class NormScale(str, Enum):
    weight = "weight"  # y = n(x) * w
    one_plus_weight = "one_plus_weight"  # y = n(x) * (1 + w), Gemma; w is initialised to zero


class NormPlacement(str, Enum):
    pre = "pre"  # x + f(n(x)) (GPT-2/3, LLaMA)
    post = "post"  # n(x + f(x)) (original Transformer, GPT-1, BERT)
    sandwich = "sandwich"  # x + n2(f(n1(x))) (CogView, Gemma-2)
    deepnorm = "deepnorm"  # n(alpha * x + f(x)) (DeepNet, GLM-130B)


class Activation(str, Enum):
    gelu = "gelu"  # exact erf GELU
    gelu_tanh = "gelu_tanh"  # tanh approximation (GPT-2 "gelu_new", BLOOM)
    relu = "relu"
    silu = "silu"
    swiglu = "swiglu"  # silu(x W) * (x V), Shazeer 2020
    geglu = "geglu"  # gelu(x W) * (x V)
    geglu_tanh = "geglu_tanh"  # tanh-GELU gate (Gemma)
    reglu = "reglu"  # relu(x W) * (x V)

    @property
    def gated(self) -> bool:
        return self in (Activation.swiglu, Activation.geglu, Activation.geglu_tanh, Activation.reglu)


class PositionKind(str, Enum):
    learned = "learned"  # learned absolute table (GPT-2)
    sinusoidal = "sinusoidal"  # Vaswani et al. 2017
    rope = "rope"  # RoFormer, Su et al. 2021
    alibi = "alibi"  # Press et al. 2021
    glm2d = "glm2d"  # GLM: position id + intra-span block position id, two learned tables
    none = "none"  # NoPE


class RopeStyle(str, Enum):
    half = "half"  # rotate the two halves (GPT-NeoX, LLaMA in HF layout)
    interleaved = "interleaved"  # rotate adjacent pairs (GPT-J, original RoFormer/Meta LLaMA)


class Sharing(str, Enum):
    mha = "mha"  # every query head has its own K/V head
    mqa = "mqa"  # one shared K/V head (Shazeer 2019)
    gqa = "gqa"  # groups of query heads share K/V heads (Ainslie et al. 2023)


class MaskKind(str, Enum):
    causal = "causal"
    prefix = "prefix"  # bidirectional over a prefix, causal after it (GLM)


class AttentionKernel(str, Enum):
    default = "default"  # let the backend choose
    memory_efficient = "memory_efficient"  # xformers-style memory-efficient attention (LLaMA)
    flash = "flash"
    math = "math"  # plain softmax(QK^T)V, the reference


class ResidualLayout(str, Enum):
    sequential = "sequential"  # x = x + attn(..); x = x + mlp(..)
    parallel = "parallel"  # x = x + attn(n(x)) + mlp(n'(x)) (GPT-J, PaLM, GPT-NeoX, Falcon)


class ParallelNorms(str, Enum):
    shared = "shared"  # one norm feeds attention and MLP (GPT-J, PaLM, Falcon-7B)
    separate = "separate"  # two norms (GPT-NeoX, Falcon-40B)


class EmbeddingNorm(str, Enum):
    none = "none"
    layernorm = "layernorm"  # BLOOM: LayerNorm right after the embedding
    rmsnorm = "rmsnorm"


class OutputHead(str, Enum):
    tied = "tied"  # logits = h @ E^T (GPT-2, PaLM, BLOOM; GLM-10B, whose "single linear output layer" reuses E)
    untied = "untied"  # a separate linear layer (LLaMA, GPT-NeoX)


class Tokenizer(str, Enum):
    sentencepiece = "sentencepiece"  # SentencePiece, piece algorithm not published (PaLM)
    sentencepiece_bpe = "sentencepiece_bpe"
    sentencepiece_unigram = "sentencepiece_unigram"
    byte_level_bpe = "byte_level_bpe"
    wordpiece = "wordpiece"
    bpe = "bpe"  # character-level BPE (Sennrich et al. 2016; GPT-1)
    unspecified = "unspecified"


class InitScheme(str, Enum):
    normal = "normal"  # N(0, std) everywhere
    scaled_residual = "scaled_residual"  # residual output projections get std / sqrt(2 * n_layers) (GPT-2)
    deepnorm = "deepnorm"  # Xavier-normal with gain beta on v, out and MLP projections (DeepNet)


class OptimizerKind(str, Enum):
    adamw = "adamw"
    adam = "adam"
    adafactor = "adafactor"


class ScheduleKind(str, Enum):
    cosine = "cosine"
    constant = "constant"
    linear = "linear"


# --------------------------------------------------------------------------------------------
# Base model: strict, and unknown keys come back with the nearest valid key.


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        for key in data:
            if key in known:
                continue
            section = getattr(cls, "section_name", cls.__name__)
            key_s = str(key)
            elsewhere = _belongs_to_other_kind(cls, key_s)
            if elsewhere:
                raise PydanticCustomError(
                    "unknown_key",
                    "'{key}' is a setting of {section} kind '{other}', not of kind '{kind}'; "
                    "remove '{key}' or set kind: {other}",
                    {"key": key_s, "section": section, "other": elsewhere, "kind": data.get("kind", "?")},
                )
            match = difflib.get_close_matches(key_s, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(known))}"
            raise PydanticCustomError(
                "unknown_key",
                "unknown key '{key}' in {section}{hint}",
                {"key": key_s, "section": section, "hint": hint},
            )
        return data


def _belongs_to_other_kind(cls: type, key: str) -> str | None:
    """For tagged sections (position, optimizer, schedule): which other kind owns `key`."""
    family = getattr(cls, "_family", None)
    if not family:
        return None
    for other in family():
        if other is not cls and key in other.model_fields:
            return other.model_fields["kind"].default.value
    return None


# Strict scalars: YAML `true` is not 1 layer, "64" is not a number, "yes" is not a boolean. A float
# field takes an int (`theta: 10000`); every float must be finite (ConfigDict allow_inf_nan=False).
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]

# Upper bounds on sizes. No published model comes near them (largest as of 2025, roughly: 126 layers in a
# released LLM and 1000 in DeepNet, d_model 20480 (MT-NLG), d_ff 73728 (PaLM 540B), 128 heads, head_dim 256,
# vocabulary 262144 (Gemma 3), context 10M tokens), yet without them
# `--set n_layers=100000000000000000000000000000` validated and `show`/`plan` printed 30-digit TiB figures.
# Each bound keeps every derived figure a plain finite number and every light command fast (costs are in
# closed form; nothing is built per layer or per token), and stays above the sizes tests/hostile probes on
# purpose (a million layers, d_model 1e6, vocab 1e9), which are judged, not refused as typos.
MAX_LAYERS = 2**20  # 1,048,576: 1000x DeepNet
MAX_WIDTH = 2**20  # d_model, head_dim, rotary_dim: 50x the widest published model
MAX_D_FF = 4 * MAX_WIDTH  # the default d_ff (4 d_model) of the widest d_model allowed
MAX_HEADS = 2**16  # n_heads, kv_heads: 512x the most published
MAX_VOCAB = 2**30  # vocab_size, head_vocab_size: token ids stay int32 with room; 4000x the largest vocabulary
MAX_SEQ = 2**30  # max_seq_len, sliding_window, learned offset: 100x the longest published context
MAX_POSITIONS = MAX_SEQ + MAX_SEQ  # learned/GLM tables: max_seq_len + offset at their bounds
# Products the bounds above still allow (2^20 layers of 2^20 x 2^22 MLPs) are caught by counting the weight
# matrices in closed form (_check_size): 1e15 parameters is ~2000x the largest dense model published (PaLM 540B)
# and ~600x the largest sparse one (Switch-C 1.6T).
MAX_PARAMS = 10**15


# Strict positive ints at most the bound (pydantic's le=, so `archc schema` says it as "maximum").
Layers = Annotated[int, Strict(), Field(gt=0, le=MAX_LAYERS)]
Width = Annotated[int, Strict(), Field(gt=0, le=MAX_WIDTH)]
FfWidth = Annotated[int, Strict(), Field(gt=0, le=MAX_D_FF)]
Heads = Annotated[int, Strict(), Field(gt=0, le=MAX_HEADS)]
Vocab = Annotated[int, Strict(), Field(gt=0, le=MAX_VOCAB)]
Tokens = Annotated[int, Strict(), Field(gt=0, le=MAX_SEQ)]
Positions = Annotated[int, Strict(), Field(gt=0, le=MAX_POSITIONS)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
UnitFloat = Annotated[float, Strict(), Field(gt=0, le=1)]


# --------------------------------------------------------------------------------------------
# Sections


class NormSpec(StrictModel):
    section_name: ClassVar[str] = "norm"
    kind: NormKind = NormKind.layernorm
    bias: Bool | None = Field(None, description="Default: true for layernorm, false for rmsnorm.")
    eps: PositiveFloat = 1e-5
    scale: NormScale = NormScale.weight
    placement: NormPlacement = NormPlacement.pre
    final: Bool | None = Field(
        None, description="Norm after the last layer. Default: present for pre and sandwich placement, absent for post."
    )
    deepnorm_alpha: PositiveFloat | None = Field(None, description="Residual scale; default (2N)^(1/4) (DeepNet, decoder-only).")
    deepnorm_beta: PositiveFloat | None = Field(None, description="Init gain; default (8N)^(-1/4) (DeepNet, decoder-only).")


class MlpSpec(StrictModel):
    section_name: ClassVar[str] = "mlp"
    activation: Activation = Activation.gelu
    d_ff: FfWidth | None = Field(None, description="Hidden width; default 4 * d_model.")
    bias: Bool = True


class _PositionBase(StrictModel):
    section_name: ClassVar[str] = "position"

    @staticmethod
    def _family():
        return POSITION_KINDS


class LearnedPosition(_PositionBase):
    kind: Literal[PositionKind.learned] = PositionKind.learned
    max_positions: Positions | None = Field(None, description="Table rows; default max_seq_len + offset.")
    offset: Annotated[int, Strict(), Field(ge=0, le=MAX_SEQ)] = Field(0, description="Added to every position id before the look-up (OPT: 2).")


class SinusoidalPosition(_PositionBase):
    kind: Literal[PositionKind.sinusoidal] = PositionKind.sinusoidal
    base: PositiveFloat = 10000.0


class RopePosition(_PositionBase):
    kind: Literal[PositionKind.rope] = PositionKind.rope
    theta: PositiveFloat = 10000.0
    rotary_fraction: UnitFloat = Field(1.0, description="Share of head_dim that is rotated (GPT-NeoX: 0.25).")
    style: RopeStyle = RopeStyle.half
    rotary_dim: Width | None = Field(None, description="Derived: round(head_dim * rotary_fraction).")


class AlibiPosition(_PositionBase):
    kind: Literal[PositionKind.alibi] = PositionKind.alibi
    max_bias: PositiveFloat = Field(8.0, description="Slopes are 2^(-max_bias * h / n_heads) (Press et al. 2021).")


class Glm2dPosition(_PositionBase):
    kind: Literal[PositionKind.glm2d] = PositionKind.glm2d
    max_positions: Positions | None = Field(None, description="Rows of each table; default max_seq_len.")


class NoPosition(_PositionBase):
    kind: Literal[PositionKind.none] = PositionKind.none


POSITION_KINDS = (LearnedPosition, SinusoidalPosition, RopePosition, AlibiPosition, Glm2dPosition, NoPosition)
PositionSpec = Annotated[
    Union[LearnedPosition, SinusoidalPosition, RopePosition, AlibiPosition, Glm2dPosition, NoPosition],
    Field(discriminator="kind"),
]


class AttentionSpec(StrictModel):
    section_name: ClassVar[str] = "attention"
    n_heads: Heads
    kv_heads: Heads | None = Field(None, description="K/V heads; derived from sharing when omitted.")
    sharing: Sharing | None = Field(None, description="mha | mqa | gqa; derived from kv_heads when omitted.")
    head_dim: Width | None = Field(None, description="Derived as d_model / n_heads unless given.")
    qkv_bias: Bool = False
    out_bias: Bool = False
    mask: MaskKind = MaskKind.causal
    sliding_window: Tokens | None = Field(None, description="Keys further back than this are masked (Mistral).")
    softmax_scale: PositiveFloat | None = Field(None, description="Default 1 / sqrt(head_dim).")
    kernel: AttentionKernel = AttentionKernel.default


class ResidualSpec(StrictModel):
    section_name: ClassVar[str] = "residual"
    layout: ResidualLayout = ResidualLayout.sequential
    parallel_norms: ParallelNorms | None = Field(None, description="Parallel layout only; default shared.")


class EmbeddingSpec(StrictModel):
    section_name: ClassVar[str] = "embedding"
    output: OutputHead = OutputHead.untied
    norm: EmbeddingNorm = EmbeddingNorm.none
    multiplier: PositiveFloat | Literal["sqrt_d_model"] = Field(1.0, description="Scale on the token embedding (Gemma: sqrt_d_model).")
    head_bias: Bool = False
    head_vocab_size: Vocab | None = Field(None, description="Rows of the output head; default vocab_size.")


class InitSpec(StrictModel):
    section_name: ClassVar[str] = "init"
    scheme: InitScheme = InitScheme.normal
    std: PositiveFloat = 0.02
    seed: Annotated[int, Strict(), Field(ge=0)] = 0


class _OptimizerBase(StrictModel):
    section_name: ClassVar[str] = "optimizer"

    @staticmethod
    def _family():
        return OPTIMIZER_KINDS


class AdamWOptimizer(_OptimizerBase):
    kind: Literal[OptimizerKind.adamw] = OptimizerKind.adamw
    lr: PositiveFloat = 3e-4
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: Annotated[float, Strict(), Field(ge=0)] = 0.1


class AdamOptimizer(_OptimizerBase):
    kind: Literal[OptimizerKind.adam] = OptimizerKind.adam
    lr: PositiveFloat = 3e-4
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8


class AdafactorOptimizer(_OptimizerBase):
    kind: Literal[OptimizerKind.adafactor] = OptimizerKind.adafactor
    lr: PositiveFloat = 1e-2
    beta2_decay: Float = Field(-0.8, lt=0, description="Second-moment decay exponent (Shazeer & Stern 2018; PaLM).")
    eps: tuple[PositiveFloat, PositiveFloat] = (1e-30, 1e-3)
    clip_threshold: PositiveFloat = 1.0
    weight_decay: Annotated[float, Strict(), Field(ge=0)] = 0.0


OPTIMIZER_KINDS = (AdamWOptimizer, AdamOptimizer, AdafactorOptimizer)
OptimizerSpec = Annotated[Union[AdamWOptimizer, AdamOptimizer, AdafactorOptimizer], Field(discriminator="kind")]


class _ScheduleBase(StrictModel):
    section_name: ClassVar[str] = "schedule"
    warmup_steps: Annotated[int, Strict(), Field(ge=0)] = 0

    @staticmethod
    def _family():
        return SCHEDULE_KINDS


class CosineSchedule(_ScheduleBase):
    kind: Literal[ScheduleKind.cosine] = ScheduleKind.cosine
    total_steps: PositiveInt = 100_000
    min_lr_ratio: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.1


class ConstantSchedule(_ScheduleBase):
    kind: Literal[ScheduleKind.constant] = ScheduleKind.constant


class LinearSchedule(_ScheduleBase):
    kind: Literal[ScheduleKind.linear] = ScheduleKind.linear
    total_steps: PositiveInt = 100_000
    min_lr_ratio: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.0


SCHEDULE_KINDS = (CosineSchedule, ConstantSchedule, LinearSchedule)
ScheduleSpec = Annotated[Union[CosineSchedule, ConstantSchedule, LinearSchedule], Field(discriminator="kind")]


class TrainingSpec(StrictModel):
    section_name: ClassVar[str] = "training"
    optimizer: OptimizerSpec = Field(default_factory=AdamWOptimizer)
    schedule: ScheduleSpec = Field(default_factory=CosineSchedule)
    grad_clip: PositiveFloat | None = 1.0


# --------------------------------------------------------------------------------------------
# The spec


class Spec(StrictModel):
    """A decoder-only language model architecture."""

    section_name: ClassVar[str] = "the spec"
    name: Str = Field(..., min_length=1, description="Short identifier, e.g. llama-7b.")
    description: Str = ""
    reference: Str = Field("", description="Paper or released config this spec follows.")

    vocab_size: Vocab
    d_model: Width
    n_layers: Layers
    max_seq_len: Tokens
    dtype: DType = DType.float32
    tokenizer: Tokenizer = Tokenizer.unspecified

    norm: NormSpec = Field(default_factory=NormSpec)
    mlp: MlpSpec = Field(default_factory=MlpSpec)
    position: PositionSpec = Field(default_factory=RopePosition)
    attention: AttentionSpec
    residual: ResidualSpec = Field(default_factory=ResidualSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    # ---- derived values, filled in once ------------------------------------------------------
    @model_validator(mode="after")
    def _resolve(self) -> "Spec":
        """Every derived field, once, by the rules below in order (a later rule reads an earlier one's
        result: rotary width needs head_dim). Each rule fills what it derives or raises SpecConflict."""
        for rule in _RULES:
            rule(self)
        return self

    # ---- conveniences --------------------------------------------------------------------------
    @property
    def embedding_multiplier(self) -> float:
        m = self.embedding.multiplier
        return math.sqrt(self.d_model) if m == "sqrt_d_model" else float(m)

    @property
    def q_dim(self) -> int:
        return self.attention.n_heads * self.attention.head_dim

    @property
    def kv_dim(self) -> int:
        return self.attention.kv_heads * self.attention.head_dim

    def to_yaml_dict(self) -> dict:
        """The resolved spec as plain data, in declaration order (enums as their values)."""
        return self.model_dump(mode="json")


# ---- the rules Spec._resolve applies, in order ------------------------------------------------


def _derive_head_dim(s: "Spec") -> None:
    """head_dim from d_model / n_heads, unless given."""
    a = s.attention
    if a.head_dim is None:
        if s.d_model % a.n_heads:
            raise SpecConflict(
                ["d_model", "attention.n_heads"],
                f"d_model={s.d_model} is not divisible by attention.n_heads={a.n_heads}; "
                f"set attention.head_dim explicitly or choose n_heads dividing d_model",
            )
        a.head_dim = s.d_model // a.n_heads


def _derive_kv_heads(s: "Spec") -> None:
    """kv_heads and sharing from each other (one may be given, or both if they agree); the softmax scale."""
    a = s.attention
    if a.kv_heads is None:
        if a.sharing in (None, Sharing.mha):
            a.kv_heads = a.n_heads
        elif a.sharing is Sharing.mqa:
            a.kv_heads = 1
        else:
            raise SpecConflict(
                ["attention.sharing"], "attention.sharing: gqa needs attention.kv_heads (the number of K/V groups)"
            )
    if a.n_heads % a.kv_heads:
        raise SpecConflict(
            ["attention.kv_heads", "attention.n_heads"],
            f"attention.kv_heads={a.kv_heads} does not divide attention.n_heads={a.n_heads}; "
            f"choose kv_heads among the divisors of {a.n_heads}",
        )
    implied = Sharing.mha if a.kv_heads == a.n_heads else Sharing.mqa if a.kv_heads == 1 else Sharing.gqa
    if a.sharing is None:
        a.sharing = implied
    elif a.sharing is not implied:
        want = {Sharing.mha: f"kv_heads: {a.n_heads}", Sharing.mqa: "kv_heads: 1", Sharing.gqa: f"1 < kv_heads < {a.n_heads}"}
        raise SpecConflict(
            ["attention.sharing", "attention.kv_heads"],
            f"attention.sharing: {a.sharing.value} disagrees with attention.kv_heads={a.kv_heads} "
            f"(n_heads={a.n_heads}, which is {implied.value}); {a.sharing.value} needs {want[a.sharing]}, "
            f"or drop one of the two fields",
        )
    if a.softmax_scale is None:
        a.softmax_scale = 1.0 / math.sqrt(a.head_dim)


def _derive_positions(s: "Spec") -> None:
    """RoPE's rotary width (rotary_dim and rotary_fraction agree, even, at most head_dim); learned and GLM table sizes."""
    a, p = s.attention, s.position
    if isinstance(p, RopePosition):
        if p.rotary_dim is not None and "rotary_fraction" not in p.model_fields_set:
            # rotary_dim given alone: the fraction follows from it (GPT-J writes rotary_dim: 64)
            if p.rotary_dim > a.head_dim:
                raise SpecConflict(
                    ["position.rotary_dim", "attention.head_dim"],
                    f"position.rotary_dim={p.rotary_dim} exceeds attention.head_dim={a.head_dim}; "
                    f"rotate at most head_dim dims",
                )
            if p.rotary_dim % 2:  # say it in the field the user wrote, not the fraction derived from it
                raise SpecConflict(
                    ["position.rotary_dim"],
                    f"position.rotary_dim={p.rotary_dim} is odd; RoPE rotates pairs of dims, so give an even rotary_dim",
                )
            p.rotary_fraction = p.rotary_dim / a.head_dim
        rd = int(round(a.head_dim * p.rotary_fraction))
        if p.rotary_dim is not None and p.rotary_dim != rd:
            raise SpecConflict(
                ["position.rotary_dim", "position.rotary_fraction"],
                f"position.rotary_dim={p.rotary_dim} disagrees with rotary_fraction={p.rotary_fraction} "
                f"x head_dim={a.head_dim} = {rd}; give only one of them",
            )
        if rd == 0 or rd % 2:
            raise SpecConflict(
                ["position.rotary_fraction", "attention.head_dim"],
                f"RoPE rotates pairs of dims, but rotary_fraction={p.rotary_fraction} x head_dim={a.head_dim} "
                f"gives {rd} rotary dims (odd or zero); choose rotary_fraction or rotary_dim giving an even width",
            )
        p.rotary_dim = rd
    if isinstance(p, LearnedPosition) and p.max_positions is None:
        p.max_positions = s.max_seq_len + p.offset
    if isinstance(p, LearnedPosition) and p.max_positions < s.max_seq_len + p.offset:
        raise SpecConflict(
            ["position.max_positions", "max_seq_len"],
            f"position.max_positions={p.max_positions} is smaller than max_seq_len={s.max_seq_len} "
            f"+ offset {p.offset}; raise max_positions or lower max_seq_len",
        )
    if isinstance(p, Glm2dPosition) and p.max_positions is None:
        p.max_positions = s.max_seq_len


def _derive_norm(s: "Spec") -> None:
    """final norm from the placement, DeepNorm's constants (Wang et al. 2022), norm bias from its kind."""
    n = s.norm
    if n.final is None:
        n.final = n.placement in (NormPlacement.pre, NormPlacement.sandwich)
    if n.placement is NormPlacement.deepnorm:
        if n.deepnorm_alpha is None:
            n.deepnorm_alpha = (2 * s.n_layers) ** 0.25
        if n.deepnorm_beta is None:
            n.deepnorm_beta = (8 * s.n_layers) ** -0.25
    elif n.deepnorm_alpha is not None or n.deepnorm_beta is not None:
        raise SpecConflict(
            ["norm.deepnorm_alpha", "norm.placement"],
            f"norm.deepnorm_alpha/deepnorm_beta only apply to norm.placement: deepnorm (placement is "
            f"{n.placement.value}); remove them or set placement: deepnorm",
        )
    if n.bias is None:
        n.bias = n.kind is NormKind.layernorm


def _derive_residual(s: "Spec") -> None:
    """parallel residual needs a pre/sandwich norm; its norm sharing."""
    n, r = s.norm, s.residual
    if r.layout is ResidualLayout.parallel:
        if n.placement in (NormPlacement.post, NormPlacement.deepnorm):
            raise SpecConflict(
                ["residual.layout", "norm.placement"],
                f"residual.layout: parallel reads one normed input for attention and MLP, which needs "
                f"norm.placement pre or sandwich, not {n.placement.value}; use layout: sequential or placement: pre",
            )
        if r.parallel_norms is None:
            r.parallel_norms = ParallelNorms.shared
    elif r.parallel_norms is not None:
        raise SpecConflict(
            ["residual.parallel_norms", "residual.layout"],
            "residual.parallel_norms only applies to residual.layout: parallel; remove it or set layout: parallel",
        )


def _derive_mlp(s: "Spec") -> None:
    """d_ff = 4 d_model unless given."""
    m = s.mlp
    if m.d_ff is None:
        m.d_ff = 4 * s.d_model


def _derive_head(s: "Spec") -> None:
    """head vocabulary; a tied head must match the embedding."""
    e = s.embedding
    if e.head_vocab_size is None:
        e.head_vocab_size = s.vocab_size
    if e.output is OutputHead.tied and e.head_vocab_size != s.vocab_size:
        raise SpecConflict(
            ["embedding.output", "embedding.head_vocab_size"],
            f"embedding.output: tied reuses the embedding matrix [{s.vocab_size}, {s.d_model}], but "
            f"embedding.head_vocab_size={e.head_vocab_size}; set output: untied or head_vocab_size: {s.vocab_size}",
        )


def _check_mask(s: "Spec") -> None:
    """a prefix mask and a sliding window do not combine."""
    a = s.attention
    if a.mask is MaskKind.prefix and a.sliding_window is not None:
        raise SpecConflict(
            ["attention.mask", "attention.sliding_window"],
            "attention.mask: prefix (bidirectional prefix) cannot be combined with attention.sliding_window; drop one",
        )


def weight_matrix_count(s: "Spec") -> int:
    """The parameters in the spec's weight matrices and tables (biases and norm gains left out: under 1% of any
    model), in closed form from the resolved sizes: exact Python ints, O(1) whatever n_layers is."""
    a, p, D = s.attention, s.position, s.d_model
    table = (p.max_positions if isinstance(p, LearnedPosition) else
             2 * p.max_positions if isinstance(p, Glm2dPosition) else 0)
    head = s.embedding.head_vocab_size if s.embedding.output is OutputHead.untied else 0
    mlp = (3 if s.mlp.activation.gated else 2) * D * s.mlp.d_ff
    attn = 2 * D * s.q_dim + 2 * D * s.kv_dim  # q and out; k and v
    return (s.vocab_size + head + table) * D + s.n_layers * (attn + mlp)


def _check_size(s: "Spec") -> None:
    """at most MAX_PARAMS parameters: each size within its bound can still multiply into an absurd model."""
    n = weight_matrix_count(s)
    if n > MAX_PARAMS:
        raise SpecConflict(
            ["n_layers", "d_model", "mlp.d_ff", "vocab_size"],
            f"the spec has about {n:.3g} parameters (n_layers={s.n_layers}, d_model={s.d_model}, d_ff={s.mlp.d_ff}, "
            f"vocab_size={s.vocab_size}), more than archc's limit of {MAX_PARAMS:.0e}; lower n_layers, d_model, "
            f"mlp.d_ff or vocab_size",
        )


_RULES = (_derive_head_dim, _derive_kv_heads, _derive_positions, _derive_norm, _derive_residual, _derive_mlp, _derive_head, _check_mask, _check_size)
