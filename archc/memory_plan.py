"""`archc plan`: per-GPU memory of a spec under each way of spreading it over GPUs, in closed form.

Every figure is read off the component graph of ONE layer of the spec (its parameters by node and
their tensor-parallel rules, archc.parallel.sharding; its attention settings) and multiplied by
n_layers, so the planner's work and memory do not grow with n_layers or vocab_size.

Per GPU, for a strategy with data-parallel degree dp (FSDP2 shards every parameter dp ways) and
tensor-parallel degree tp (Megatron layout, archc.parallel.sharding):

- weights      sum over parameters of local elements x itemsize of --dtype;
- gradients    the same (torch keeps .grad in the parameter's dtype);
- optimizer    torch.optim's state, in the parameter dtype: AdamW/Adam two moments (2 x weights);
               Adafactor (Shazeer & Stern 2018) factored second moments, rows + columns of every
               matrix and the whole of every vector, no first moment;
- activations  what autograd saves for backward, per layer (below), x n_layers, plus the tensors
               outside the layers; with --checkpointing only each layer's input is kept, plus one
               layer's saved tensors while it is recomputed;
- KV cache     2 x kv_heads x head_dim x itemsize per token and layer (kv heads split by tp when
               kv_heads >= tp, whole on every rank for multi-query attention).

Peak for training = weights + optimizer + max(activations + loss transient, gradients): during
backward, gradients appear as activations are freed (layer by layer), so the two never both peak.
FSDP adds the all-gathered weights and gradients of the layer in flight and the prefetched next one.
Peak for generation = weights + KV cache at --seq-len tokens + the prefill's largest transient.

Activation model, per layer, in elements (b local sequences, S tokens, D d_model, per-rank widths
q = n_heads/tp x head_dim, kv = kv heads per rank x head_dim, f = d_ff/tp); counted from what the
PyTorch emitter's ops save for backward (see ACT_* below; tests/dist checks the model against the
bytes autograd actually saves, on the CPU).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from archc.errors import UserError
from archc.graph import ComponentGraph, ComponentKind as K
from archc.parallel.sharding import ShardRule, _problem, make_plan, local_elements
from archc.spec import AdafactorOptimizer, AdamOptimizer, AdamWOptimizer, DType, Spec

# ---- what the emitted module saves for backward, per layer, in multiples of b x S x width --------
# Calibrated against autograd's saved tensors of exporters/torch_module.py (tests/dist/test_plan_memory.py).
ACT_PER_NORM_D = 2.0  # a norm keeps its input (and its normalised output for the scale)
ACT_PER_ATTN_D = 1.0  # attention keeps its input (shared by q, k, v)
ACT_PER_ATTN_Q = 4.0  # q before and after RoPE, the attention output, its input to o
ACT_PER_ATTN_KV = 4.0  # k, v before and after RoPE / the cache (repeated to q's heads counts in Q)
ACT_PER_MLP_D = 1.0  # the MLP's input
ACT_PER_MLP_F = 4.0  # gate and up outputs, act(gate), their product (down's input)
ACT_OUTSIDE_D = 4.0  # embedding output, final norm input/output, the head's input
ACT_LOSS_V = 3.0  # float32 logits x ~3 (logits, log-softmax, its gradient) per token x vocab, 4 bytes each


class ParallelKind(str, Enum):
    single = "single"
    fsdp = "fsdp"
    tp = "tp"
    fsdp_tp = "fsdp+tp"


@dataclass(frozen=True)
class Strategy:
    kind: ParallelKind
    dp: int
    tp: int

    @property
    def label(self) -> str:
        if self.kind is ParallelKind.fsdp_tp:
            return f"fsdp {self.dp} x tp {self.tp}"
        if self.kind is ParallelKind.fsdp:
            return f"fsdp {self.dp}"
        if self.kind is ParallelKind.tp:
            return f"tp {self.tp}"
        if self.kind is ParallelKind.single:
            return "single"
        raise ValueError(f"unknown parallel kind {self.kind}")


@dataclass(frozen=True)
class MemoryRow:
    strategy: Strategy
    local_batch: int
    weights: int
    gradients: int
    optimizer: int
    activations: int  # without checkpointing
    activations_ckpt: int  # with per-layer activation checkpointing
    fsdp_transient: int
    loss_transient: int
    kv_cache: int
    prefill_transient: int
    checkpointing: bool

    @property
    def train_peak(self) -> int:
        act = self.activations_ckpt if self.checkpointing else self.activations
        return self.weights + self.optimizer + self.fsdp_transient + max(act + self.loss_transient, self.gradients)

    @property
    def infer_peak(self) -> int:
        return self.weights + self.kv_cache + self.prefill_transient + self.fsdp_transient


# ---- sizes --------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, option: str = "--gpu-memory") -> int:
    m = _SIZE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: give a positive size with a unit, e.g. 141GiB, 80GB or 24576MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# ---- the graph of one layer ---------------------------------------------------------------------


def one_layer_graph(spec: Spec) -> ComponentGraph:
    """The spec's graph with one layer: every layer of the stack is built the same, so per-layer
    figures x n_layers are the whole stack's, at a cost independent of n_layers."""
    from archc.graph import compile as compile_graph

    return compile_graph(spec.model_copy(update={"n_layers": 1}))


@dataclass(frozen=True)
class _Shape:
    """Per-rank widths and counts read off the one-layer graph at one tp degree."""

    layer_params: list[tuple[tuple[int, ...], ShardRule]]  # (shape, rule) of one layer's parameters
    outside_params: list[tuple[tuple[int, ...], ShardRule]]
    n_norms_per_layer: int
    q_local: int
    kv_local: int
    f_local: int
    alibi_heads_local: int  # heads whose ALiBi bias is added to the mask per layer (0 without ALiBi)
    head_rows: int  # vocabulary rows of the output head


def _shape(graph: ComponentGraph, tp: int) -> _Shape:
    plan = make_plan(graph, tp)
    layer, outside = [], []
    norms = 0
    q = kv = f = alibi = 0
    for full, shape, node in graph.params():
        (layer if graph.node(node)["layer"] is not None else outside).append((shape, plan.rule(full)))
    for n in graph.nodes():
        d = graph.node(n)
        kind = K(d["kind"])
        if kind is K.norm and d["layer"] is not None:
            norms += 1
        elif kind is K.attention:
            s = d["settings"]
            q = s["n_heads"] // tp * s["head_dim"]
            kv = (s["kv_heads"] // tp if plan.kv_split else s["kv_heads"]) * s["head_dim"]
        elif kind is K.mlp:
            f = d["settings"]["d_ff"] // tp
        elif kind is K.alibi:
            alibi = d["settings"]["n_heads"] // tp
    head = graph.node(graph.nodes(K.head)[0])["settings"]["vocab_size"]
    return _Shape(layer, outside, norms, q, kv, f, alibi, head)


def _optimizer_elements(spec: Spec, shapes: list[tuple[tuple[int, ...], ShardRule]], tp: int, dp: int) -> int:
    """Optimizer-state elements per rank for parameters of these shapes (FSDP2 shards dim 0 by dp)."""
    opt = spec.training.optimizer
    total = 0
    for shape, rule in shapes:
        local = list(shape)
        if rule is ShardRule.colwise or rule is ShardRule.heads:
            local[0] //= tp
        elif rule is ShardRule.rowwise:
            local[-1] //= tp
        local[0] = math.ceil(local[0] / dp)
        if isinstance(opt, (AdamWOptimizer, AdamOptimizer)):
            total += 2 * math.prod(local)
        elif isinstance(opt, AdafactorOptimizer):
            total += (local[0] + local[-1]) if len(local) >= 2 else math.prod(local)
        else:
            raise TypeError(f"unknown optimizer section {type(opt).__name__}")
    return total


def _param_elements(shapes: list[tuple[tuple[int, ...], ShardRule]], tp: int) -> int:
    return sum(local_elements(shape, rule, tp) for shape, rule in shapes)


def memory_row(spec: Spec, graph1: ComponentGraph, strategy: Strategy, *, batch: int, seq_len: int,
               dtype: DType, checkpointing: bool) -> MemoryRow:
    """Per-GPU bytes for `strategy`; `graph1` is one_layer_graph(spec)."""
    L, D, w = spec.n_layers, spec.d_model, dtype.itemsize
    dp, tp = strategy.dp, strategy.tp
    sh = _shape(graph1, tp)
    b = math.ceil(batch / dp)
    bs = b * seq_len
    layer_elems = _param_elements(sh.layer_params, tp)
    outside_elems = _param_elements(sh.outside_params, tp)
    param_elems = L * layer_elems + outside_elems
    fsdp = strategy.kind in (ParallelKind.fsdp, ParallelKind.fsdp_tp)
    shard = dp if fsdp else 1
    weights = math.ceil(param_elems / shard) * w
    opt = (L * _optimizer_elements(spec, sh.layer_params, tp, shard) + _optimizer_elements(spec, sh.outside_params, tp, shard)) * w

    per_layer = bs * (ACT_PER_NORM_D * sh.n_norms_per_layer * D + ACT_PER_ATTN_D * D + ACT_PER_ATTN_Q * sh.q_local
                      + ACT_PER_ATTN_KV * sh.kv_local + ACT_PER_MLP_D * D + ACT_PER_MLP_F * sh.f_local)
    per_layer_bytes = per_layer * w + b * sh.alibi_heads_local * seq_len * seq_len * w  # mask + ALiBi bias, per layer
    mask_bytes = b * seq_len * seq_len * w  # one [b, 1, S, S] additive mask for every layer
    outside = bs * ACT_OUTSIDE_D * D * w + mask_bytes
    activations = int(L * per_layer_bytes + outside)
    activations_ckpt = int(L * bs * D * w + per_layer_bytes + outside)
    loss = int(bs * sh.head_rows * 4 * ACT_LOSS_V)
    # FSDP2: the layer in flight and the prefetched next one are whole (weights; their gradients in backward).
    fsdp_transient = 2 * 2 * layer_elems * w if fsdp else 0
    kv = L * 2 * sh.kv_local * b * seq_len * w
    # Prefill at seq_len: one layer's working set at a time (no graph kept) and the float32 logits.
    prefill = int(per_layer_bytes + mask_bytes + bs * sh.head_rows * (4 + w))
    return MemoryRow(strategy, b, weights, weights, int(opt), activations, activations_ckpt, fsdp_transient, loss,
                     int(kv), prefill, checkpointing)


def strategies(graph1: ComponentGraph, gpus: int, kinds: list[ParallelKind]) -> list[tuple[Strategy, str | None]]:
    """Every strategy of the requested kinds on `gpus` GPUs: (strategy, why it cannot be used or None)."""
    out: list[tuple[Strategy, str | None]] = []
    for kind in kinds:
        if kind is ParallelKind.single:
            out.append((Strategy(kind, 1, 1), None))
        elif kind is ParallelKind.fsdp:
            if gpus > 1:
                out.append((Strategy(kind, gpus, 1), None))
        elif kind is ParallelKind.tp:
            if gpus > 1:
                out.append((Strategy(kind, 1, gpus), _problem(graph1, gpus)))
        elif kind is ParallelKind.fsdp_tp:
            for tp in range(2, gpus):
                if gpus % tp == 0:
                    out.append((Strategy(kind, gpus // tp, tp), _problem(graph1, tp)))
        else:
            raise ValueError(f"unknown parallel kind {kind}")
    return out
