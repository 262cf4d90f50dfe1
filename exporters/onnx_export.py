"""ONNX emitter: the component graph lowered node by node into one ONNX model (no tracing).

`export(graph, out_dir, target=..., dtype=...)` walks `graph.nodes()` in order; each node's kind
has a lowering (exporters/onnx_lowering_portable.py) that reads the node's settings, params and
in-edges (by port) and emits ONNX nodes with onnx.helper. The `cuda` target
(exporters/onnx_lowering_cuda.py) overrides some kinds with onnxruntime's com.microsoft fused
operators and falls back to the portable lowering, per node, where an operator's limits exclude
the node; which lowering each node got is written to the model's metadata (`archc.lowering`).

One model serves prefill and decode: the past length is a dynamic dimension (0 at prefill).
I/O contract (README "I/O contract"): inputs input_ids, attention_mask, [position_ids], [prefix_len],
past_key_values.{i}.key/.value [B, kv_heads, past, head_dim]; outputs logits (float32) and
present.{i}.key/.value, plus (export option `next_token`, default `argmax`) next_token int64
[B, 1], the greedy pick at the last position, so a greedy decoder need not copy logits to the host.
`logits=Logits.last` (an export option, default `all` = the contract) makes
the head read only the last position: logits [B, 1, vocab] in prefill and decode (recorded in the
metadata as `archc.logits`). An `all` model has one more input, `logits_start` (int64 [1], an
overridable initializer whose default [0] keeps the contract for anyone who does not feed it): the
head computes positions logits_start: only (Python-style; -1 = the last, what generation feeds),
like Hugging Face's `logits_to_keep`.

Weights are streamed one tensor at a time into `model.onnx.data` (always external, one layout for
every size, so a >2 GB model needs nothing special), at 64-byte aligned offsets in graph order;
the graph proto holds only small constants. Same graph, weights and options -> identical bytes.
The output directory is built in a temp dir beside the target and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from archc.dtypes import DType
from archc.files import guard_model_dir
from archc.graph import ComponentGraph, ComponentKind, PositionIds, UnknownSetting
from archc.model_dir import (
    DATA_FILE,
    GENAI_CONFIG_FILE,
    META_DTYPE,
    META_KV_CACHE,
    META_LOGITS,
    META_LOWERING,
    META_NEXT_TOKEN,
    META_ORT_OPS,
    META_POSITION_IDS,
    META_QUANT,
    META_TARGET,
    MODEL_FILE,
    ORT_OPS_FILE,
    SPEC_FILE,
)
from archc.errors import UserError
from archc.quant import QuantSettings
from archc.room import check_export_room
from exporters.onnx_weights import param_owner as _owner
from exporters.onnx_weights import weight_source, write_weights
from exporters.staging import staged_model_dir

if TYPE_CHECKING:
    from exporters.onnx_lowering_cuda import CudaPlan

OPSET = 23  # Attention, RMSNormalization, RotaryEmbedding
MS_OPSET = 1
IR_VERSION = 11  # opset 23 needs IR 11; onnxruntime 1.2x/1.3x reads up to IR 13


class Target(str, Enum):
    portable = "portable"  # standard ONNX operators only, any execution provider
    cuda = "cuda"  # com.microsoft fused operators where they fit (onnxruntime CUDA EP)


class Kernels(str, Enum):
    """Whose kernels a cuda-target model may call beyond onnxruntime's own operators (`archc compile --kernels`)."""

    onnxruntime = "onnxruntime"  # onnxruntime's operators only (standard ONNX and com.microsoft)
    archc = "archc"  # also archc's custom-op library (exporters/ort_ops) where its ops fit: archc.GatedMLP for an fp16
    # SwiGLU MLP's gate|up, SiLU and Mul (exporters/onnx_lowering_cuda.py); the library is copied into the model
    # folder, named by the metadata archc.ort_ops, and `archc run` registers it with onnxruntime


ORT_OPS_DOMAIN = "archc"  # the custom ops' ONNX domain (opset ORT_OPS_OPSET)
ORT_OPS_OPSET = 1


class Logits(str, Enum):
    """Which positions the head computes logits for."""

    all = "all"  # [batch, seq, vocab]: the fixed I/O contract; the input logits_start (default 0) may ask for fewer
    last = "last"  # [batch, 1, vocab]: the last column only (left padding: every row's last real token);
    # what generation reads, and the only choice where batch * seq * vocab passes 32-bit indexing


class NextToken(str, Enum):
    """What the model adds for picking the next token (beyond the contract's logits)."""

    argmax = "argmax"  # output next_token int64 [batch, 1] = ArgMax of the last position's float32 logits:
    # greedy decoding reads 8 bytes per row from the device instead of [batch, vocab] logits
    none = "none"  # the contract's outputs only


class WeightLayout(str, Enum):
    """How a projection x @ W^T is emitted (W: archc's [out, in], the torch Linear layout)."""

    in_out = "in_out"  # MatMul(x, W^T) on a transposed [in, out] initializer: standard ONNX, every provider
    out_in = "out_in"  # com.microsoft FusedMatMul(x, W, transB=1) on W as it is: cuBLAS's transposed-B GEMM


class KvCache(str, Enum):
    """How the model's past and present caches relate (metadata `archc.kv_cache`)."""

    concat = "concat"  # present = concat(past, new): a new, longer buffer every step
    shared = "shared"  # past and present may be one max-length buffer (GroupQueryAttention, cuda target)


ELEM = {DType.float32: TensorProto.FLOAT, DType.float16: TensorProto.FLOAT16, DType.bfloat16: TensorProto.BFLOAT16}

# Symbolic dimension names (also read by the runner).
BATCH, SEQ, TOTAL, PAST = "batch_size", "sequence_length", "total_sequence_length", "past_sequence_length"
LOGITS_SEQ = "logits_sequence_length"  # logits' positions in an `all` model: sequence_length unless logits_start is fed


@dataclass
class WeightRef:
    """An initializer whose values are streamed later: archc parameter `source` (or several,
    concatenated along dim 0, e.g. q/k/v into one projection), maybe transposed."""

    name: str
    source: str | tuple[str, ...]
    shape: tuple[int, ...]
    transpose: bool
    quant: QuantSettings | None = None  # set: written as MatMulNBits' B/scales/zero_points (exporters/quantize.py)
    # set (with quant): one expert of a com.microsoft QMoE (exporters/quantize.py qmoe_weight): two sources are
    # interleaved row by row (row 2i from the first, 2i+1 from the second), not stacked, and the arrays carry a
    # leading expert axis of 1 (B [1, N, K*bits/8], scales [1, N, K/block]); the same bytes as MatMulNBits' otherwise
    expert: bool = False


@dataclass
class Ctx:
    """The ONNX graph under construction, the target's plan, and a memo of emitted values shared across
    nodes (keyed by what they were computed from, e.g. ("dim", value, axis))."""

    graph: ComponentGraph
    target: Target
    dtype: DType
    logits: Logits = Logits.all
    next_token: NextToken = NextToken.argmax
    weight_layout: WeightLayout = WeightLayout.in_out  # a target's plan may change it (onnx_lowering_cuda.plan)
    kv_cache: KvCache = KvCache.concat  # the cuda plan makes it shared where every attention is GroupQueryAttention
    cuda_plan: CudaPlan | None = None  # set by onnx_lowering_cuda.plan on the cuda target
    quant: QuantSettings = field(default_factory=QuantSettings)  # --quant: projections through MatMulNBits
    kernels: Kernels = Kernels.onnxruntime  # --kernels: whether archc's custom ops may be emitted (cuda target)
    nbits_nodes: set = field(default_factory=set)  # graph nodes whose projections went through MatMulNBits
    nodes: list = field(default_factory=list)
    consts: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    env: dict = field(default_factory=dict)  # graph node -> ONNX value (or a lowering-specific object)
    memo: dict = field(default_factory=dict)
    lowering: dict = field(default_factory=dict)  # graph node -> which lowering it got
    _counter: dict = field(default_factory=dict)
    _weight_names: set = field(default_factory=set)
    scope: str = ""
    _fused_fp32: bool = field(default=False, init=False, repr=False)  # set by _new_ctx alone; read as fused_fp32

    @property
    def fused_fp32(self) -> bool:
        """Tests only: allow fp32 on fused ops whose CPU kernel takes fp32. One value for the whole export:
        _new_ctx sets it when it builds the Ctx and the property has no setter, so a lowering cannot flip it
        between two attention nodes (half a graph fused, half not)."""
        return self._fused_fp32

    @property
    def elem(self) -> int:
        return ELEM[self.dtype]

    def fresh(self, hint: str) -> str:
        base = f"{self.scope}/{hint}" if self.scope else hint
        n = self._counter.get(base, 0)
        self._counter[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def op(self, op_type: str, inputs: list, n_out: int = 1, *, domain: str = "", out: list | None = None, **attrs) -> Any:
        """Emit one node; returns its output name (or list of names when n_out > 1)."""
        outs = out or [self.fresh(f"{op_type}{'' if i == 0 else i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], outs, name=self.fresh(f"n_{op_type}"),
                                           domain=domain or None, **attrs))
        return outs[0] if n_out == 1 and out is None else outs

    def const(self, value, hint: str = "c", elem: int | None = None) -> str:
        """A small constant stored inside model.onnx (ints, scalars, tables made from settings)."""
        arr = np.asarray(value)
        name = self.fresh(hint)
        if elem == TensorProto.BFLOAT16:
            t = helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, arr.astype(np.float32).flatten().tolist())
        else:
            if elem is not None:
                arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
            t = onnx.numpy_helper.from_array(arr, name)
        self.consts.append(t)
        return name

    def fconst(self, value, hint: str = "c") -> str:
        """A constant in the model's float dtype."""
        return self.const(np.asarray(value, dtype=np.float32), hint, elem=self.elem)

    def weight(self, full: str, transpose: bool = False) -> str:
        """The initializer of archc parameter `full` (a tied name resolves to its owner)."""
        full = self.graph.tied().get(full, full)
        name = f"{full}.T" if transpose else full
        if name not in self._weight_names:
            node, local = _owner(self.graph, full)
            shape = tuple(self.graph.node(node)["params"][local])
            if transpose:
                shape = shape[::-1]
            self.weights.append(WeightRef(name, full, shape, transpose))
            self._weight_names.add(name)
        return name

    def weight_concat(self, fulls: list[str], name: str, transpose: bool = False) -> str:
        """One initializer holding parameters `fulls` stacked along dim 0 (then maybe transposed)."""
        if name not in self._weight_names:
            shapes = []
            for full in fulls:
                node, local = _owner(self.graph, full)
                shapes.append(tuple(self.graph.node(node)["params"][local]))
            shape = (sum(s[0] for s in shapes), *shapes[0][1:])
            self.weights.append(WeightRef(name, tuple(fulls), shape[::-1] if transpose else shape, transpose))
            self._weight_names.add(name)
        return name

    def matmul_wt(self, x: str, fulls: list[str], concat_name: str | None = None, *, quantizable: bool = True) -> str:
        """x @ W^T for archc parameters `fulls` ([out, in] each; several are stacked along `out` into one
        initializer named concat_name), in this export's weight layout (WeightLayout); with --quant (and
        `quantizable`: the head only with --quant-head), a MatMulNBits on the quantized W instead."""
        if self.quant.active and quantizable:
            from exporters.quantize import matmul_nbits

            return matmul_nbits(self, x, fulls, concat_name)
        if self.weight_layout is WeightLayout.out_in:
            w = self.weight(fulls[0]) if concat_name is None else self.weight_concat(fulls, concat_name)
            return self.op("FusedMatMul", [x, w], domain="com.microsoft", transB=1)
        if concat_name is None:
            return self.op("MatMul", [x, self.weight(fulls[0], transpose=True)])
        return self.op("MatMul", [x, self.weight_concat(fulls, f"{concat_name}.T", transpose=True)])

    def graph_input(self, name: str, elem: int, dims: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    def overridable(self, name: str, default: np.ndarray) -> str:
        """A graph input that is also an initializer of the same name (ONNX's overridable initializer):
        feeding it is optional, and a consumer that does not feed it gets `default`."""
        self.consts.append(onnx.numpy_helper.from_array(default, name))
        t = helper.np_dtype_to_tensor_dtype(default.dtype)
        return self.graph_input(name, t, list(default.shape))

    def graph_output(self, name: str, value: str, elem: int, dims: list) -> str:
        self.op("Identity", [value], out=[name])
        self.outputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    # ---- shape helpers shared by lowerings -------------------------------------------------------
    def dim(self, value: str, axis: int) -> str:
        """1-D int64 [size of `value` along `axis`], memoised."""
        key = ("dim", value, axis)
        if key not in self.memo:
            self.memo[key] = self.op("Shape", [value], start=axis, end=axis + 1)
        return self.memo[key]


# ------------------------------------------------------------------------------------------------
# Building the graph


Lowering = Callable[[Ctx, str, dict], Any]


def lowerings(target: Target) -> dict[ComponentKind, Lowering]:
    from exporters import onnx_lowering_portable as portable

    table = dict(portable.LOWERINGS)
    if target is Target.cuda:
        from exporters import onnx_lowering_cuda as cuda

        table.update(cuda.LOWERINGS)
    return table


def _new_ctx(graph: ComponentGraph, target: Target | str, dtype: DType | str, *, fused_fp32: bool, logits: Logits | str,
             next_token: NextToken | str, quant: QuantSettings | None, kernels: Kernels | str = Kernels.onnxruntime) -> Ctx:
    """The one place a Ctx is made, and the only writer of its fused_fp32."""
    ctx = Ctx(graph, Target(target), DType.of(dtype), logits=Logits(logits), next_token=NextToken(next_token),
              quant=(quant or QuantSettings()).check(DType.of(dtype)), kernels=check_kernels(kernels, target))
    ctx._fused_fp32 = bool(fused_fp32)
    return ctx


def check_kernels(kernels: Kernels | str, target: Target | str) -> Kernels:
    """--kernels as an enum; archc's ops are CUDA kernels for onnxruntime's CUDA provider: cuda target only."""
    if not isinstance(kernels, Kernels) and kernels not in {k.value for k in Kernels}:
        raise UserError(f"--kernels {kernels}: choose one of {', '.join(k.value for k in Kernels)}")
    k = Kernels(kernels)
    if k is Kernels.archc and Target(target) is not Target.cuda:
        raise UserError(f"--kernels archc: needs --target cuda (archc's ops replace cuda-lowered nodes), not --target {Target(target).value}")
    return k


def build_graph(graph: ComponentGraph, target: Target | str = Target.portable, dtype: DType | str = DType.float32,
                *, fused_fp32: bool = False, logits: Logits | str = Logits.all,
                next_token: NextToken | str = NextToken.argmax, quant: QuantSettings | None = None,
                kernels: Kernels | str = Kernels.onnxruntime) -> Ctx:
    """Lower every node; returns the context holding the nodes and the (not yet loaded) weights."""
    ctx = _new_ctx(graph, target, dtype, fused_fp32=fused_fp32, logits=logits, next_token=next_token, quant=quant, kernels=kernels)
    table = lowerings(ctx.target)
    if ctx.target is Target.cuda:
        from exporters import onnx_lowering_cuda as cuda

        cuda.plan(ctx)
    for name in graph.nodes():
        node = graph.node(name)
        kind = ComponentKind(node["kind"])
        if kind not in table:
            raise UnknownSetting(name, "kind", kind, f"{ctx.target.value} ONNX lowering")
        ctx.scope = name
        result = table[kind](ctx, name, node)
        if result is not None:
            ctx.env[name] = result
        ctx.lowering.setdefault(name, "portable")
    ctx.scope = ""
    for name in ctx.nbits_nodes:
        ctx.lowering[name] = nbits_words(ctx.lowering[name], ctx.quant)
    return ctx


def nbits_words(how: str, quant: QuantSettings) -> str:
    """A node's lowering words once its projections run as MatMulNBits: the MatMul they name becomes
    `MatMulNBits int4 sym b32` (FusedMatMul and the like untouched); where none is named (attention, the
    portable lowering), the projections are added: `portable; projections MatMulNBits int4 sym b32`."""
    words = quant.op_words()
    named = re.sub(r"(?<![A-Za-z])MatMul(?![A-Za-z])", words, how)
    return named if named != how else f"{how}; projections {words}"


def inputs_of(ctx: Ctx, name: str, port: str) -> list:
    return [ctx.env[src] for src in ctx.graph.inputs_at(name, port)]


def input_of(ctx: Ctx, name: str, port: str):
    src = ctx.graph.input_of(name, port)
    return None if src is None else ctx.env[src]


# ------------------------------------------------------------------------------------------------
# Export


@dataclass
class ExportResult:
    out_dir: Path
    lowering: dict[str, str]
    n_weights: int
    data_bytes: int
    logits: Logits = Logits.all
    genai_unsupported: str | None = None  # why onnxruntime-genai cannot drive this model (genai_config.json says so too)
    tokenizer_files: list[str] = field(default_factory=list)  # copied from tokenizer_dir


def make_model(ctx: Ctx, initializers: list) -> onnx.ModelProto:
    # logits first, then present.* in layer order, then next_token (readers that zip present names skip it by name)
    outputs = sorted(ctx.outputs, key=lambda o: (o.name != "logits", o.name == "next_token"))
    g = helper.make_graph(ctx.nodes, ctx.graph.model.name, ctx.inputs, outputs, initializer=ctx.consts + initializers)
    opsets = [helper.make_operatorsetid("", OPSET)]
    if any(n.domain == "com.microsoft" for n in ctx.nodes):
        opsets.append(helper.make_operatorsetid("com.microsoft", MS_OPSET))
    if uses_ort_ops(ctx):
        opsets.append(helper.make_operatorsetid(ORT_OPS_DOMAIN, ORT_OPS_OPSET))
    m = helper.make_model(g, opset_imports=opsets, ir_version=IR_VERSION, producer_name="archc", producer_version=_version())
    meta = {
        META_LOWERING: json.dumps(ctx.lowering, sort_keys=True),
        META_TARGET: ctx.target.value,
        META_DTYPE: ctx.dtype.short,
        META_KV_CACHE: ctx.kv_cache.value,
        META_LOGITS: ctx.logits.value,
        META_NEXT_TOKEN: ctx.next_token.value,
        META_POSITION_IDS: ctx.graph.model.position_ids.value,  # the runner's feeds follow it
    }
    if ctx.quant.active:  # absent: not quantized (older models and --quant none alike)
        meta[META_QUANT] = ctx.quant.to_json()
    if uses_ort_ops(ctx):  # absent: onnxruntime's operators only
        meta[META_ORT_OPS] = ORT_OPS_FILE
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    return m


def uses_ort_ops(ctx: Ctx) -> bool:
    """Whether the graph calls archc's custom ops (then the model folder carries their library)."""
    return any(n.domain == ORT_OPS_DOMAIN for n in ctx.nodes)


def _version() -> str:
    from archc import __version__

    return __version__


def export(graph: ComponentGraph, out_dir: str | os.PathLike, *, target: Target | str = Target.portable,
           dtype: DType | str = DType.float32, weights: str | os.PathLike | None = None,
           spec_yaml: str | None = None, fused_fp32: bool = False, logits: Logits | str = Logits.all,
           next_token: NextToken | str = NextToken.argmax, tokenizer_dir: str | os.PathLike | None = None,
           progress: bool | None = None, quant: QuantSettings | None = None, kernels: Kernels | str = Kernels.onnxruntime,
           ort_ops_lib: str | os.PathLike | None = None) -> ExportResult:
    """Write model.onnx, model.onnx.data, spec.yaml and genai_config.json into `out_dir`, atomically.

    `tokenizer_dir` (a Hugging Face directory): its tokenizer files are copied in too (archc.text.
    TOKENIZER_FILES), and genai_config.json takes its bos/eos/pad ids from them.

    `logits`: `all` (the contract's [batch, seq, vocab]) or `last` ([batch, 1, vocab], see Logits).
    `next_token`: `argmax` adds the output next_token [batch, 1] (the greedy pick, see NextToken).
    `progress`: a progress bar on stderr while weights are written (None: when stderr is a terminal).
    `quant`: weight-only quantization of the projections (archc.quant, exporters/quantize.py).
    `kernels`: `archc` lets the cuda lowering emit archc's custom ops (Kernels); the model folder then carries their
    library: `ort_ops_lib`, else exporters.ort_ops.build.library (ARCHC_ORT_OPS_LIB, else built with nvcc)."""
    return _export(graph, out_dir, target=target, dtype=dtype, weights=weights, spec_yaml=spec_yaml, fused_fp32=fused_fp32,
                   logits=logits, next_token=next_token, tokenizer_dir=tokenizer_dir, progress=progress, quant=quant,
                   kernels=kernels, ort_ops_lib=ort_ops_lib)


def _export_interrupted_after(n: int, graph: ComponentGraph, out_dir: str | os.PathLike, **options) -> ExportResult:
    """Tests: `export` that raises after n weights were drawn, to prove an interruption leaves nothing."""

    def wrap(inner):
        seen = [0]

        def get(full):
            seen[0] += 1
            if seen[0] > n:
                raise RuntimeError("simulated interruption")
            return inner(full)

        return get

    return _export(graph, out_dir, wrap_source=wrap, **options)


def _export(graph: ComponentGraph, out_dir: str | os.PathLike, *, target: Target | str = Target.portable,
            dtype: DType | str = DType.float32, weights: str | os.PathLike | None = None,
            spec_yaml: str | None = None, fused_fp32: bool = False, logits: Logits | str = Logits.all,
            next_token: NextToken | str = NextToken.argmax, tokenizer_dir: str | os.PathLike | None = None,
            progress: bool | None = None, wrap_source: Callable | None = None, quant: QuantSettings | None = None,
            kernels: Kernels | str = Kernels.onnxruntime, ort_ops_lib: str | os.PathLike | None = None) -> ExportResult:
    out = Path(out_dir)
    label = f"-o {out}"
    if check_kernels(kernels, target) is Kernels.archc and ort_ops_lib is None:  # before any work: no nvcc is one line
        from exporters.ort_ops.build import Kind, library

        ort_ops_lib = library(Kind.cuda)
    # only a directory holding nothing but archc's own files is replaced; never an input, never a user's file
    replacing = guard_model_dir(out, label)
    check_export_room(graph, out, DType.of(dtype).itemsize,
                      whole_in_memory=weights is not None and Path(weights).is_dir(), label=label)
    if tokenizer_dir is not None:  # its ids go into genai_config.json: one past the vocabulary is refused before the work
        from archc.text import check_source_token_ids

        check_source_token_ids(tokenizer_dir, graph.spec.vocab_size)
    ctx = build_graph(graph, target, dtype, fused_fp32=fused_fp32, logits=logits, next_token=next_token, quant=quant,
                      kernels=kernels)
    get = weight_source(graph, weights)
    if wrap_source is not None:
        get = wrap_source(get)
    with staged_model_dir(out, label, replacing) as tmp:
        inits = write_weights(ctx, tmp / DATA_FILE, get, progress)
        model = make_model(ctx, inits)
        (tmp / MODEL_FILE).write_bytes(model.SerializeToString(deterministic=True))
        (tmp / SPEC_FILE).write_text(spec_yaml if spec_yaml is not None else _spec_yaml(graph, ctx.dtype))
        if uses_ort_ops(ctx):  # the model folder is self-contained: `archc run` registers this copy (META_ORT_OPS)
            import shutil

            shutil.copyfile(ort_ops_lib, tmp / ORT_OPS_FILE)
        copied = []
        if tokenizer_dir is not None:
            from archc.text import copy_tokenizer_files

            copied = copy_tokenizer_files(tokenizer_dir, tmp)
        from archc.text import special_token_ids

        ids = special_token_ids(tmp, graph.spec.vocab_size)
        (tmp / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(graph, ctx, ids), indent=2) + "\n")
        data_bytes = (tmp / DATA_FILE).stat().st_size
    return ExportResult(out, dict(ctx.lowering), len(inits), data_bytes, ctx.logits, genai_unsupported(graph), copied)


def _spec_yaml(graph: ComponentGraph, dtype: DType) -> str:
    """The model directory's spec: the architecture as compiled, so its dtype is the one the tensors
    and the metadata have (--dtype), not the source spec's (`archc show DIR` reads this file)."""
    import yaml

    data = graph.spec.to_yaml_dict()
    source = data.get("dtype")
    data["dtype"] = dtype.value
    head = f"# Written by `archc compile`; dtype is the compiled one (--dtype {dtype.short}; the source spec said {source}).\n"
    return head + yaml.safe_dump(data, sort_keys=False)


def genai_unsupported(graph: ComponentGraph) -> str | None:
    """Why onnxruntime-genai cannot drive this graph (None: it can). genai feeds input_ids,
    attention_mask, position_ids [batch, seq] and the past/present caches, nothing else."""
    reasons = []
    if graph.model.position_ids is PositionIds.glm2d:
        reasons.append("GLM 2-D positions (position_ids [batch, 2, seq]; genai feeds [batch, seq])")
    if "prefix_len" in graph.nodes(ComponentKind.input):
        reasons.append("a prefix mask (input prefix_len [batch], which genai does not feed)")
    return "; ".join(reasons) or None


def genai_config(graph: ComponentGraph, ctx: Ctx, ids: dict[str, list[int]] | None = None) -> dict:
    """onnxruntime-genai's genai_config.json (model.decoder section with I/O names). bos/eos/pad come
    from `ids` (archc.text.special_token_ids: the model's generation_config.json); without them they
    are placeholders (a spec has no tokenizer). A graph genai cannot drive (genai_unsupported) gets a
    model type naming the reason, which genai refuses ("Unsupported model_type in config.json: ...")."""
    model = graph.model
    ids = ids or {}
    eos = ids.get("eos") or [2]
    bos = (ids.get("bos") or [1])[0]
    pad = (ids.get("pad") or ids.get("eos") or [0])[0]  # no pad id: genai pads with eos, as transformers does
    attn = graph.settings(graph.nodes(ComponentKind.attention)[0])
    names = {n.name for n in ctx.inputs}
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if "position_ids" in names:
        inputs["position_ids"] = "position_ids"
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": [{"cuda": {}}] if ctx.target is Target.cuda else []},
        "filename": MODEL_FILE,
        "head_size": attn.head_dim,
        "hidden_size": model.d_model,
        "inputs": inputs,
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
        "num_attention_heads": attn.n_heads,
        "num_hidden_layers": len(graph.nodes(ComponentKind.attention)),
        "num_key_value_heads": attn.kv_heads,
    }
    return {
        "model": {
            "bos_token_id": bos, "eos_token_id": eos[0] if len(eos) == 1 else eos, "pad_token_id": pad,
            "context_length": model.max_seq_len,
            "decoder": decoder,
            # genai picks its model class by type; every plain decoder-only type shares one
            # implementation driven by the I/O names above, so archc models declare "llama"
            "type": "llama" if genai_unsupported(graph) is None else f"not-for-onnxruntime-genai: {genai_unsupported(graph)}",
            "vocab_size": graph.settings("head").vocab_size,
        },
        "search": {"do_sample": False, "max_length": model.max_seq_len, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": ctx.kv_cache is KvCache.shared,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


