"""Weight-only quantization settings (`archc compile --quant`) and the bytes a quantized model takes.

The method is round-to-nearest, block-wise along the input dimension (the baseline of the GPTQ and
AWQ papers, and what onnxruntime's MatMulNBits executes): each run of `block_size` input weights of
one output row gets one scale (and, asymmetric, one zero point); w ~ (q - zero_point) * scale.
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
        if self.active and dtype is DType.bfloat16:
            raise UserError("--quant with --dtype bf16: onnxruntime's MatMulNBits CPU kernel takes fp32/fp16 activations; use --dtype fp16 or fp32")
        return self

    def to_json(self) -> str:
        """The model's `archc.quant` metadata (deterministic key order)."""
        return json.dumps({"kind": self.kind.value, "block_size": self.block_size, "scheme": self.scheme.value,
                           "accuracy_level": self.accuracy_level, "head": self.head}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> QuantSettings:
        if not text:
            return cls()
        d = json.loads(text)
        return cls(QuantKind(d["kind"]), int(d["block_size"]), QuantScheme(d["scheme"]), int(d["accuracy_level"]), bool(d["head"]))

    def describe(self) -> str:
        if not self.active:
            return "none"
        return (f"{self.kind.value} {self.scheme.value}, block {self.block_size}, accuracy_level {self.accuracy_level}"
                f"{', head too' if self.head else ''} (round-to-nearest, MatMulNBits)")


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
