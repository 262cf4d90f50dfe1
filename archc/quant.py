"""Weight-only quantization settings (`archc compile --quant`) and the bytes a quantized model takes.

Block-wise along the input dimension (what onnxruntime's MatMulNBits executes): each run of
`block_size` input weights of one output row gets one scale (and, asymmetric, one zero point);
w ~ (q - zero_point) * scale. Two calibration-free ways to pick a block's grid (QuantMethod): plain
round-to-nearest on the block's full range (the baseline of the GPTQ and AWQ papers), or a search over
a few shrunk ranges plus the least-squares scale for each rounding (as llama.cpp's quantizers do
without data), keeping the grid with the least squared reconstruction error of the block.
The exporter side (packing, the MatMulNBits nodes) is exporters/quantize.py; this module is light
(no numpy, torch, onnx) so `show` and `diff` can say the quantized size in closed form.

Which weights are quantized: the matrices of attention and MLP projections (every weight a
lowering passes through Ctx.matmul_wt). The token embedding, positions, norms and biases stay in the
compute dtype; the head too unless `head` is set (a tied head then gets its own quantized copy of
the embedding matrix, the embedding itself staying dense for the Gather).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum

from archc.dtypes import DType
from archc.errors import UserError


class QuantKind(str, Enum):
    none = "none"  # every weight in the compute dtype
    int4 = "int4"  # MatMulNBits bits=4: two weights per byte, low nibble first
    int8 = "int8"  # MatMulNBits bits=8: one weight per byte


class QuantMethod(str, Enum):
    rtn = "rtn"  # round-to-nearest on the block's full range (absmax, or min/max with zero)
    search = "search"  # per block: shrunk ranges and least-squares scales tried, least squared error kept (never worse than rtn)


class QuantScheme(str, Enum):
    symmetric = "symmetric"  # no zero point stored: onnxruntime's default 2^(bits-1) (8 for int4, 128 for int8)
    asymmetric = "asymmetric"  # a packed uint8 zero point per block (min/max range, zero included)


DEFAULT_BLOCK_SIZE = 32
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 (A's minimum)


def bits_of(kind: QuantKind) -> int:
    if kind is QuantKind.int4:
        return 4
    if kind is QuantKind.int8:
        return 8
    if kind is QuantKind.none:
        raise ValueError("QuantKind.none has no bit width")
    raise ValueError(f"unknown QuantKind {kind!r}")


@dataclass(frozen=True)
class QuantSettings:
    kind: QuantKind = QuantKind.none
    block_size: int = DEFAULT_BLOCK_SIZE
    scheme: QuantScheme = QuantScheme.symmetric
    accuracy_level: int = 0
    head: bool = False  # quantize the output head as well
    method: QuantMethod = QuantMethod.rtn

    @property
    def active(self) -> bool:
        return self.kind is not QuantKind.none

    @property
    def bits(self) -> int:
        return bits_of(self.kind)

    def check(self, dtype: DType) -> QuantSettings:
        """Refuse settings MatMulNBits cannot run, naming the option (one line, exit 2)."""
        bs = self.block_size
        if bs < 16 or bs & (bs - 1):
            raise UserError(f"--quant-block-size {bs}: MatMulNBits needs a power of two >= 16 (16, 32, 64, 128, ...)")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"--quant-accuracy-level {self.accuracy_level}: choose one of {', '.join(map(str, ACCURACY_LEVELS))}")
        if not self.active and self.method is not QuantMethod.rtn:
            raise UserError(f"--quant-method {self.method.value}: applies to a quantized export; add --quant int4 or --quant int8")
        if self.active and dtype is DType.bfloat16:
            raise UserError("--quant with --dtype bf16: onnxruntime's MatMulNBits CPU kernel takes fp32/fp16 activations; use --dtype fp16 or fp32")
        return self

    def to_json(self) -> str:
        """The model's `archc.quant` metadata (deterministic key order)."""
        return json.dumps({"kind": self.kind.value, "block_size": self.block_size, "scheme": self.scheme.value,
                           "accuracy_level": self.accuracy_level, "head": self.head, "method": self.method.value}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> QuantSettings:
        if not text:
            return cls()
        d = json.loads(text)
        # "method" is absent from folders compiled before --quant-method existed: those were round-to-nearest
        return cls(QuantKind(d["kind"]), int(d["block_size"]), QuantScheme(d["scheme"]), int(d["accuracy_level"]), bool(d["head"]),
                   QuantMethod(d.get("method", QuantMethod.rtn.value)))

    def short(self) -> str:
        """A few words for a table cell: `int4 sym b32`, `int8 asym b64 +head`, `int4 sym b32 search`, `dense`."""
        if not self.active:
            return "dense"
        scheme = {QuantScheme.symmetric: "sym", QuantScheme.asymmetric: "asym"}[self.scheme]
        method = {QuantMethod.rtn: "", QuantMethod.search: " search"}[self.method]
        return f"{self.kind.value} {scheme} b{self.block_size}{' +head' if self.head else ''}{method}"

    def op_words(self) -> str:
        """How a quantized projection runs, for the lowering summary: `MatMulNBits int4 sym b32`."""
        scheme = {QuantScheme.symmetric: "sym", QuantScheme.asymmetric: "asym"}[self.scheme]
        return f"MatMulNBits {self.kind.value} {scheme} b{self.block_size}"

    def describe(self, lowering: dict[str, str]) -> str:
        """compile's `quantized:` line. Which ops hold the quantized weights is read from the export's lowering
        record (`lowering`, the model's archc.lowering metadata), not assumed: a --quant MLP lowered as one QMoE
        node (the cuda lowering's GateUp.qmoe) was reported as MatMulNBits."""
        if not self.active:
            return "none"
        method = {QuantMethod.rtn: "round-to-nearest", QuantMethod.search: "per-block scale search"}[self.method]
        ops = quantized_ops(lowering)
        held = ", ".join(f"{op} in {n} component{'s' if n != 1 else ''}" for op, n in ops.items()) or \
            "no quantized op in the lowering record"
        return (f"{self.kind.value} {self.scheme.value}, block {self.block_size}, accuracy_level {self.accuracy_level}"
                f"{', head too' if self.head else ''} ({method}; {held})")


# The onnxruntime com.microsoft ops that take archc's quantized weights (exporters/quantize.py writes their bytes):
# MatMulNBits per projection, QMoE for a whole gated MLP (the cuda lowering's GateUp.qmoe), and archc's own
# GatedMLPNBits and LinearNBits (--kernels archc: gate|up, q|k|v, o, down on MatMulNBits's bytes, exporters/ort_ops).
# A lowering record's words name the op a graph node was lowered to (`cuda:QMoE int4 sym b32 (...)`, `MatMulNBits
# int4 sym b32`, `archc:GatedMLPNBits int4 sym b32 (...)`, `archc:LinearNBits int4 sym b32 (o, + residual)`).
QUANTIZED_OPS = ("MatMulNBits", "QMoE", "GatedMLPNBits", "LinearNBits")


def quantized_ops(lowering: dict[str, str]) -> dict[str, int]:
    """QUANTIZED_OPS named in a lowering record ({graph node: lowering words}) -> how many graph nodes name each,
    in QUANTIZED_OPS' order; ops no node names are left out. An op counts where the words name it with its
    quantization (`LinearNBits int4 ...`), not where a refusal names it (`not archc.Linear: quantization int8 sym b32;
    LinearNBits takes int4 sym b32` is a MatMulNBits node)."""
    import re

    kinds = "|".join(k.value for k in QuantKind if k is not QuantKind.none)
    counts = {op: sum(1 for how in lowering.values() if re.search(rf"(?<![A-Za-z]){op} ({kinds})(?![A-Za-z0-9])", how))
              for op in QUANTIZED_OPS}
    return {op: n for op, n in counts.items() if n}


def model_dir_quant(path) -> QuantSettings | None:
    """The quantization a compiled model directory was built with (its model.onnx metadata), or None
    when `path` is not a compiled model directory. Light: the metadata is read straight off the
    protobuf wire format (no onnx import; the graph field is skipped, the weights are external)."""
    from pathlib import Path

    from archc.model_dir import META_QUANT, MODEL_FILE

    model = Path(path) / MODEL_FILE
    if not Path(path).is_dir() or not model.is_file():
        return None
    try:
        meta = _metadata_props(model.read_bytes())
        return QuantSettings.from_json(meta.get(META_QUANT))
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"{model}: cannot read its archc metadata ({META_QUANT}); compile it again") from None


def _metadata_props(buf: bytes) -> dict[str, str]:
    """ModelProto.metadata_props (field 14: StringStringEntryProto, key = 1, value = 2) of a serialized model."""

    def varint(b: bytes, i: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            byte = b[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                return value, i
            shift += 7

    def fields(b: bytes):
        i = 0
        while i < len(b):
            tag, i = varint(b, i)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, i = varint(b, i)
            elif wire == 1:
                value, i = b[i:i + 8], i + 8
            elif wire == 2:
                n, i = varint(b, i)
                value, i = b[i:i + n], i + n
            elif wire == 5:
                value, i = b[i:i + 4], i + 4
            else:
                raise ValueError(f"protobuf wire type {wire}")
            yield number, value

    meta = {}
    for number, value in fields(buf):
        if number == 14:
            entry = dict(fields(value))
            meta[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b"")).decode()
    return meta


def quantized_matrix_bytes(n: int, k: int, q: QuantSettings, dtype: DType) -> int:
    """Bytes of one [n, k] weight as MatMulNBits stores it: B [n, k_blocks, block_size*bits/8] uint8,
    scales [n, k_blocks] in the compute dtype, and (asymmetric) zero points [n, ceil(k_blocks*bits/8)] uint8."""
    kb = math.ceil(k / q.block_size)
    b = n * kb * (q.block_size * q.bits // 8)
    scales = n * kb * dtype.itemsize
    if q.scheme is QuantScheme.symmetric:
        zp = 0
    elif q.scheme is QuantScheme.asymmetric:
        zp = n * math.ceil(kb * q.bits / 8)
    else:
        raise ValueError(f"unknown QuantScheme {q.scheme!r}")
    return b + scales + zp


QUANTIZED_KINDS = ("attention", "mlp")  # ComponentKind values whose 2-D weights go through matmul_wt


def weight_bytes(graph, dtype: DType, q: QuantSettings) -> int:
    """Bytes of every weight of the model as compiled with `dtype` and `q` (alignment padding aside).
    Reads parameter shapes off the graph only; a light graph (archc.cost.light_graph) counts its last
    built layer for every layer not built, as archc.cost does."""
    last, missing = graph.built_layers - 1, graph.n_layers - graph.built_layers
    total = 0
    for name in graph.nodes():
        d = graph.node(name)
        times = 1 + missing if d["layer"] == last else 1
        kind = d["kind"]
        for local, shape in d["params"].items():
            quantize = q.active and len(shape) == 2 and local.endswith("weight") and (
                kind in QUANTIZED_KINDS or (kind == "head" and q.head))
            if quantize:
                total += times * quantized_matrix_bytes(shape[0], shape[1], q, dtype)
            else:
                total += times * math.prod(shape) * dtype.itemsize
        if kind == "head" and d.get("tied") and q.active and q.head:  # a quantized copy of the shared matrix
            for shape in d["tied_shapes"].values():
                total += quantized_matrix_bytes(shape[0], shape[1], q, dtype)
    return total
