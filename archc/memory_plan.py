"""`archc plan`: per-GPU memory of a spec under each way of spreading it over GPUs, in closed form.

Every figure is read off the component graph of ONE layer of the spec (its parameters by node and
their tensor-parallel rules, archc.parallel.sharding; its attention settings) and multiplied by
n_layers, so the planner's work and memory do not grow with n_layers or vocab_size.

Per GPU, for a strategy with data-parallel degree dp (FSDP2 shards every parameter dp ways) and
tensor-parallel degree tp (Megatron layout, archc.parallel.sharding):

- weights      sum over parameters of local elements x itemsize of --dtype (with --compute-dtype
               bfloat16 and --dtype float32, as `archc train` runs on CUDA: float32 master weights,
               gradients and optimizer state, bf16 activations and autocast's bf16 weight copies);
- gradients    the same (torch keeps .grad in the parameter's dtype);
- optimizer    torch.optim's state, in the parameter dtype: AdamW/Adam two moments (2 x weights);
               Adafactor (Shazeer & Stern 2018) factored second moments, rows + columns of every
               matrix and the whole of every vector, no first moment;
- activations  what autograd saves for backward, per layer (below), x n_layers, plus the tensors
               outside the layers; with --checkpointing only each layer's input is kept, plus one
               layer's saved tensors while it is recomputed;
- KV cache     2 x kv_heads x head_dim x itemsize per token and layer (kv heads split by tp when
               kv_heads >= tp; one K/V head per rank when kv_heads < tp).

Peak for training = weights + optimizer + max(activations + loss transient, gradients): during
backward, gradients appear as activations are freed (layer by layer), so the two never both peak.
FSDP adds the all-gathered weights and gradients of the layer in flight and the prefetched next one.
Peak for generation = weights + KV cache at --seq-len tokens + the prefill's transient, read off the
no_grad forward of the emitted module (exporters/torch_module.py), which drops each node's output after
its last reader: the additive mask it builds for a call with attention_mask ([b, 1, S, S], plus
[b, heads, S, S] with ALiBi, held for the whole forward), plus the largest of
  - one layer node at a time: the [b, S, D] values the walk still holds while it runs (liveness on the
    one-layer graph: the residual stream, the node's input, a parallel branch's output) and that node's
    own temporaries, which die when it returns (under no_grad nothing is saved across nodes):
      norm       its output (LayerNorm) or its output and x^2 (RMSNorm, torch's composite kernel)
      attention  q, k, v (k and v are the cache), RoPE's copies of q and k; K/V expanded to q's heads (GQA/MQA,
                 a prefill always has a mask tensor, so flash's unexpanded GQA never applies); SDPA's output,
                 its [b, S, heads x head_dim] copy for o and o's output; the math kernel (SDPA's fallback where
                 the kernel setting's own kernel takes no mask: memory_efficient on the CPU, flash on CUDA)
                 materialises scores and probabilities [b, heads, S, S] (compute dtype) and a bool mask of them
      mlp        gated: act(gate), up and their product (3 f), then the product and down's output (f + D);
                 otherwise up's output and act(up) (2 f), then f + D
      residual   its output (and alpha x skip under DeepNorm)
  - the head: the values still held (the final norm's output) and the logits of the LAST position only
    ([b, 1, V]) in the compute dtype and float32: every generate feeds logits_start = -1 (archc run's
    onnxruntime steps, archc.runner.steppers; generate-tp's greedy loop, exporters.torch_module.greedy_generate;
    the bench's backends), so the head never makes the prompt's [b, S, V] (PaLM at 16 x 2048: 33 GB).

Activation model: the tensors autograd keeps for backward, counted per layer from the graph's
nodes as the PyTorch emitter computes them (b local sequences, S tokens, D d_model; per rank
q = n_heads/tp x head_dim, kv = kv heads per rank x head_dim, f = d_ff/tp), in --dtype:
  norm            its input (D); torch's fused norms keep only float32 statistics besides
  attention       its input (D, once when a shared norm also feeds the MLP); q, and k before RoPE
                  (q + kv) when rotary; SDPA's q, k, v and output (q + 2 kv, or q + 2 q when K/V
                  heads are expanded for GQA/MQA because a mask tensor or the kernel setting keeps
                  flash attention out); o's input (q)
  mlp             its input (D, once when shared); gated: gate and up outputs, act(gate), their
                  product (4 f); otherwise up's output and act(up) (2 f)
  once            the additive mask in --dtype when one is built: [b, heads, S, S] with ALiBi,
                  [b, 1, S, S] for a prefix mask or a sliding window, none for plain causal
  outside         embedding norm and final norm inputs (D each); the loss keeps d loss/d h (D) and
                  d loss/d W of the head in float32 (vocab x D x 4 bytes)
Loss transient: one chunk of 4096 rows x vocab of logits (in --dtype and float32, softmax in float32).
Optimizer step: foreach AdamW / Adafactor make one weights-sized temporary while the gradients and
the state are alive, so training peak is also at least weights + gradients + optimizer + weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from archc.errors import UserError
from archc.graph import ComponentGraph, ComponentKind as K
from archc.parallel.sharding import ShardRule, explain, local_elements, make_plan
from archc.spec import AdafactorOptimizer, AdamOptimizer, AdamWOptimizer, AttentionKernel, DType, MaskKind, NormKind, Spec

# ---- what the emitted module (exporters/torch_module.py) saves for backward --------------------
LOSS_CHUNK = 4096  # rows per chunk of GraphModel.loss's linear cross-entropy (exporters/torch_loss.py)


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
        backward = self.weights + self.optimizer + self.fsdp_transient + max(act + self.loss_transient, self.gradients)
        step = self.weights + self.gradients + self.optimizer + self.weights  # foreach optimizer temporaries
        return max(backward, step)

    @property
    def infer_peak(self) -> int:
        return self.weights + self.kv_cache + self.prefill_transient + self.fsdp_transient


# ---- sizes --------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, option: str = "--gpu-memory") -> int:
    m = _SIZE.match(text)
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()]) if m else 0
    if size < 1:  # 0.0000001B was 0 bytes: every strategy "does not fit" under a header saying "0 B"
        raise UserError(f"{option} {text!r}: give a positive size with a unit, e.g. 141GiB, 80GB or 24576MiB")
    return size


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
    saved_d: int  # D-wide tensors kept per layer (norm inputs, distinct attention/MLP inputs)
    saved_q: int  # q-wide tensors kept per layer
    saved_kv: int  # kv-wide tensors kept per layer
    saved_f: int  # d_ff-wide tensors kept per layer
    q_local: int
    kv_local: int
    f_local: int
    mask_heads: int  # heads of the one additive mask tensor (ALiBi: local heads; prefix / window: 1; causal: 0)
    outside_d: int  # D-wide tensors kept outside the layers (embedding norm, final norm inputs)
    head_rows: int  # vocabulary rows of the output head
    prefill_layer: tuple  # _Moment per moment of a no_grad layer forward; the layer's transient is their max
    prefill_head: "_Moment"  # the head's moment (its logits added by memory_row)


@dataclass(frozen=True)
class _Moment:
    """What a no_grad forward holds at one moment of one node, besides the KV cache and the mask: `held_d`
    [b, S, D] values of other nodes the walk keeps, and the node's own temporaries, in per-token widths
    (d x D + q x q_local + kv x kv_local + f x f_local, compute dtype) and `scores` heads of the math
    kernel's [b, S, S] scores and probabilities (compute dtype) and bool mask."""

    held_d: int
    d: int = 0
    q: int = 0
    kv: int = 0
    f: int = 0
    scores: int = 0


def _d_wide(kind: K) -> bool:
    """Whether a node's output is [b, S, D] (the values the graph walk holds between nodes)."""
    if kind in (K.token_embedding, K.scale, K.learned_position, K.sinusoidal_position, K.glm2d_position, K.add, K.norm,
                K.attention, K.mlp, K.residual):
        return True
    if kind in (K.input, K.output, K.mask, K.rotary, K.alibi, K.head):
        return False
    raise ValueError(f"unknown component kind {kind}")


def _math_kernel(kernel: AttentionKernel, cuda: bool) -> bool:
    """Whether SDPA runs its math kernel for a call with a mask tensor (every prefill with attention_mask):
    the emitter allows the setting's kernel and math as the fallback (exporters/torch_module._sdpa_backends)."""
    if kernel is AttentionKernel.math:
        return True
    if kernel is AttentionKernel.memory_efficient:
        return not cuda  # no memory-efficient kernel on the CPU
    if kernel is AttentionKernel.flash:
        return cuda  # CUDA flash takes no mask tensor; the CPU flash kernel does
    if kernel is AttentionKernel.default:
        return False  # memory-efficient on CUDA, flash on the CPU: both take the mask
    raise ValueError(f"unknown attention kernel {kernel}")


def _node_moments(graph: ComponentGraph, n: str, tp: int, cuda: bool, kv_split: bool) -> list[dict]:
    """A no_grad forward's moments inside node `n` of a layer (its own temporaries; module docstring)."""
    d = graph.node(n)
    kind = K(d["kind"])
    if kind is K.norm:
        ns = graph.settings(n)
        if ns.norm is NormKind.layernorm:
            return [{"d": 1}]
        if ns.norm is NormKind.rmsnorm:
            return [{"d": 2}]
        raise ValueError(f"unknown norm kind {ns.norm}")
    if kind is K.attention:
        s = graph.settings(n)
        kv_heads_local = s.kv_heads // tp if kv_split else 1
        copied = 2 if s.kv_heads != s.n_heads and kv_heads_local > 1 else 0  # a copy, except from one head (a view)
        rotary = graph.input_of(n, "rotary") is not None
        scores = s.n_heads // tp if _math_kernel(s.kernel, cuda) else 0
        return [{"q": 2, "kv": 2} if rotary else {"q": 1},  # q, [q and k before RoPE and its halves]; k, v are the cache
                {"q": 2 + copied, "scores": scores},  # q, [K/V expanded], SDPA's output, [its scores]
                {"q": 3 + copied, "d": 1}]  # ... the output's copy for o, o's output
    if kind is K.mlp:
        gated = graph.settings(n).activation.gated
        return [{"f": 3 if gated else 2}, {"f": 1, "d": 1}]
    if kind is K.residual:
        return [{"d": 1 if graph.settings(n).alpha == 1.0 else 2}]
    if kind in (K.add, K.scale):
        return [{"d": 1}]
    if kind in (K.input, K.output, K.token_embedding, K.learned_position, K.sinusoidal_position, K.glm2d_position, K.rotary,
                K.mask, K.alibi, K.head):
        raise ValueError(f"{kind.value} is not a layer node")
    raise ValueError(f"unknown component kind {kind}")


def _prefill_moments(graph: ComponentGraph, tp: int, cuda: bool, kv_split: bool) -> tuple[tuple[_Moment, ...], _Moment]:
    """The moments of a no_grad forward through the one-layer graph's layer, and the head's: at each node the
    [b, S, D] values made before it that it or a later node still reads (the walk drops the rest)."""
    order = graph.nodes()
    last_read: dict[str, int] = {}
    for i, n in enumerate(order):
        for src, _ in graph.inputs(n):
            last_read[src] = i
    layer: list[_Moment] = []
    head = None
    for i, n in enumerate(order):
        kind = K(graph.node(n)["kind"])
        held = sum(1 for v in order[:i] if last_read.get(v, -1) >= i and _d_wide(K(graph.node(v)["kind"])))
        if kind is K.head:
            head = _Moment(held)
        elif graph.node(n)["layer"] is not None:
            layer += [_Moment(held, **m) for m in _node_moments(graph, n, tp, cuda, kv_split)]
    return tuple(layer), head


def _shape(graph: ComponentGraph, tp: int, cuda: bool = True) -> _Shape:
    plan = make_plan(graph, tp)
    layer, outside = [], []
    for full, shape, node in graph.params():
        (layer if graph.node(node)["layer"] is not None else outside).append((shape, plan.rule(full)))
    saved = {"d": 0, "q": 0, "kv": 0, "f": 0}
    q = kv = f = mask_heads = outside_d = 0
    seen_inputs: set[str] = set()
    has_mask_tensor = False
    for n in graph.nodes(K.mask):
        ms = graph.settings(n)
        has_mask_tensor = ms.mask is MaskKind.prefix or ms.sliding_window is not None
    alibi = graph.nodes(K.alibi)
    for n in graph.nodes():
        d = graph.node(n)
        kind = K(d["kind"])
        if kind is K.norm:
            if d["layer"] is not None:
                saved["d"] += 1
            else:
                outside_d += 1
        elif kind is K.attention:
            s = graph.settings(n)
            q = s.n_heads // tp * s.head_dim
            kv = (s.kv_heads // tp if plan.kv_split else 1) * s.head_dim
            x = graph.input_of(n, "x")
            saved["d"] += x not in seen_inputs
            seen_inputs.add(x)
            rotary = graph.input_of(n, "rotary") is not None
            # flash attention takes GQA/MQA unexpanded only on CUDA, without a mask tensor, kernel default or flash
            flash = cuda and not (has_mask_tensor or alibi) and s.kernel in (AttentionKernel.default, AttentionKernel.flash)
            kv_heads_local = kv // s.head_dim
            # K/V expanded to q's heads: a copy, except from one head, where expand + reshape stays a view
            copied = s.kv_heads != s.n_heads and not flash and kv_heads_local > 1
            saved["q"] += 3 + rotary + (2 if copied else 0)  # [q pre-RoPE], q, output, o's input, [k, v expanded]
            saved["kv"] += rotary + (0 if copied else 2)  # [k pre-RoPE], k, v
        elif kind is K.mlp:
            f = graph.settings(n).d_ff // tp
            x = graph.input_of(n, "x")
            saved["d"] += x not in seen_inputs
            seen_inputs.add(x)
            saved["f"] += 4 if graph.settings(n).activation.gated else 2
        elif kind is K.alibi:
            mask_heads = graph.settings(n).n_heads // tp
    if not alibi and has_mask_tensor:
        mask_heads = 1
    head = graph.settings(graph.nodes(K.head)[0]).vocab_size
    prefill_layer, prefill_head = _prefill_moments(graph, tp, cuda, plan.kv_split)
    return _Shape(layer, outside, saved["d"], saved["q"], saved["kv"], saved["f"], q, kv, f, mask_heads, outside_d, head,
                  prefill_layer, prefill_head)


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
               dtype: DType, checkpointing: bool, cuda: bool = True, compute_dtype: DType | None = None) -> MemoryRow:
    """Per-GPU bytes for `strategy`; `graph1` is one_layer_graph(spec)."""
    compute = compute_dtype or dtype
    L, D, p_bytes, w = spec.n_layers, spec.d_model, dtype.itemsize, compute.itemsize
    dp, tp = strategy.dp, strategy.tp
    sh = _shape(graph1, tp, cuda)
    b = math.ceil(batch / dp)
    bs = b * seq_len
    layer_elems = _param_elements(sh.layer_params, tp)
    outside_elems = _param_elements(sh.outside_params, tp)
    param_elems = L * layer_elems + outside_elems
    fsdp = strategy.kind in (ParallelKind.fsdp, ParallelKind.fsdp_tp)
    shard = dp if fsdp else 1
    weights = math.ceil(param_elems / shard) * p_bytes
    opt = (L * _optimizer_elements(spec, sh.layer_params, tp, shard) + _optimizer_elements(spec, sh.outside_params, tp, shard)) * p_bytes
    # autocast (weights in float32, compute in bf16/fp16) keeps a compute-dtype copy of every weight it casts
    autocast_copies = math.ceil(param_elems / shard) * w if compute is not dtype else 0

    per_layer = bs * (sh.saved_d * D + sh.saved_q * sh.q_local + sh.saved_kv * sh.kv_local + sh.saved_f * sh.f_local) * w
    mask_bytes = b * sh.mask_heads * seq_len * seq_len * w  # one additive mask tensor shared by every layer
    V = sh.head_rows
    outside = bs * (sh.outside_d + 1) * D * w + V * D * 4 + mask_bytes  # norms' inputs, dloss/dh, dloss/dW (float32)
    activations = int(L * per_layer + outside + autocast_copies)
    activations_ckpt = int(L * bs * D * w + per_layer + outside + autocast_copies)  # each layer's input, one layer recomputed
    loss = int(min(bs, LOSS_CHUNK) * V * (2 * w + 8))
    # FSDP2: the layer in flight and the prefetched next one are whole (weights; their gradients in backward).
    fsdp_transient = 2 * 2 * layer_elems * p_bytes if fsdp else 0
    kv = L * 2 * sh.kv_local * b * seq_len * w
    # Prefill at seq_len, no_grad (module docstring): the mask, then the largest moment of one layer node or the head.
    def moment(m: _Moment) -> int:
        widths = (m.held_d + m.d) * D + m.q * sh.q_local + m.kv * sh.kv_local + m.f * sh.f_local
        return bs * widths * w + m.scores * b * seq_len * seq_len * (2 * w + 1)

    # the head on the last position (logits_start = -1, module docstring): its product in the compute dtype, then .float()
    # (no copy in float32)
    logits = b * V * (4 if w == 4 else 4 + w)
    alibi_heads = sh.mask_heads if graph1.nodes(K.alibi) else 0
    prefill_mask = b * seq_len * seq_len * w * (len(graph1.nodes(K.mask)) + alibi_heads)  # the mask, [+ mask + bias per head]
    prefill = int(prefill_mask + max(max(map(moment, sh.prefill_layer)), moment(sh.prefill_head) + logits))
    return MemoryRow(strategy, b, weights, weights, int(opt), activations, activations_ckpt, fsdp_transient, loss,
                     int(kv), prefill, checkpointing)


MAX_GPUS = 1 << 24  # far past any cluster; keeps the divisor search of fsdp+tp (sqrt(--gpus) steps) instant


def _proper_divisors(n: int) -> list[int]:
    """Divisors of n in [2, n), ascending, in sqrt(n) steps (a loop to n hung on --gpus 10**12)."""
    small = [d for d in range(2, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if n // d != d]


def no_strategy_reason(kind: ParallelKind, gpus: int) -> str:
    """Why `strategies` offers nothing of `kind` on `gpus` GPUs (it offers every kind it can)."""
    if kind is ParallelKind.single:
        return "always possible"  # strategies always offers it; named for completeness of the branches
    if kind in (ParallelKind.fsdp, ParallelKind.tp):
        return f"needs --gpus 2 or more (got {gpus})"
    if kind is ParallelKind.fsdp_tp:
        return f"needs --gpus that splits into fsdp x tp, both at least 2 (4, 6, 8, ...; got {gpus})"
    raise ValueError(f"unknown parallel kind {kind}")


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
                out.append((Strategy(kind, 1, gpus), explain(graph1, gpus)))
        elif kind is ParallelKind.fsdp_tp:
            for tp in _proper_divisors(gpus):
                out.append((Strategy(kind, gpus // tp, tp), explain(graph1, tp)))
        else:
            raise ValueError(f"unknown parallel kind {kind}")
    return out
