"""Weight-only quantized projections: round-to-nearest block-wise packing for onnxruntime's
com.microsoft MatMulNBits, and the node that consumes it (settings: archc.quant).

MatMulNBits(A, B, scales, [zero_points]) computes A @ dequant(B)^T with, for output row n and input
column k (block j = k // block_size):
    dequant[n, k] = (q[n, k] - zp[n, j]) * scales[n, j]
B is uint8 [N, k_blocks, block_size * bits / 8]: the q of one block, packed along K, for 4 bits two
per byte with the first of each pair in the low nibble. scales are [N, k_blocks] in A's dtype. zero
points, when given, are uint8 [N, ceil(k_blocks * bits / 8)] packed the same way (a row's odd last
nibble is padding, 0); when absent onnxruntime uses 2^(bits-1). W is archc's [out, in] = [N, K]
layout as it is: no transpose, for every target and WeightLayout.

Round-to-nearest (ties to even, numpy's rint) of w / scale, where `scale` is the value actually
stored (already rounded to the compute dtype), so dequantization reproduces the nearest grid point
of the stored grid. Symmetric: scale = m / -2^(bits-1) with m the block's largest-magnitude weight
(signed), so m lands on q = 0 exactly and the grid uses all 2^bits levels (onnxruntime's MLAS
quantizer does the same). Asymmetric: the range [min(w, 0), max(w, 0)] over 2^bits - 1 steps, the
zero point round(-min / scale). A K that is not a multiple of block_size is padded with zeros.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from archc.dtypes import DType
from archc.quant import QuantScheme, QuantSettings

MS = "com.microsoft"
_NP = {DType.float32: np.float32, DType.float16: np.float16}


def scale_dtype(dtype: DType):
    if dtype in _NP:
        return _NP[dtype]
    raise ValueError(f"MatMulNBits scales in {dtype.value}: not supported (QuantSettings.check refuses bf16)")


def quantize_rtn(w: np.ndarray, q: QuantSettings, dtype: DType) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w float32 [N, K] -> (B uint8 [N, kb, blob], scales [N, kb] in dtype, zero_points uint8 [N, zp_cols] or None)."""
    n, k = w.shape
    bs, bits = q.block_size, q.bits
    kb = math.ceil(k / bs)
    blocks = np.zeros((n, kb * bs), np.float32)
    blocks[:, :k] = w
    blocks = blocks.reshape(n, kb, bs)
    qmax = (1 << bits) - 1
    if q.scheme is QuantScheme.symmetric:
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        m = np.take_along_axis(blocks, idx, axis=-1)[..., 0]
        scales = (m / np.float32(-(1 << (bits - 1)))).astype(scale_dtype(dtype))
        zp = np.full((n, kb), 1 << (bits - 1), np.float32)
    elif q.scheme is QuantScheme.asymmetric:
        lo = np.minimum(blocks.min(axis=-1), 0)
        hi = np.maximum(blocks.max(axis=-1), 0)
        scales = ((hi - lo) / np.float32(qmax)).astype(scale_dtype(dtype))
        s32 = scales.astype(np.float32)
        safe = np.where(s32 == 0, np.float32(1), s32)
        zp = np.where(s32 == 0, np.float32(0), np.clip(np.rint(-lo / safe), 0, qmax)).astype(np.float32)
    else:
        raise ValueError(f"unknown QuantScheme {q.scheme!r}")
    s32 = scales.astype(np.float32)
    safe = np.where(s32 == 0, np.float32(1), s32)[..., None]
    qv = np.where(s32[..., None] == 0, zp[..., None], np.clip(np.rint(blocks / safe) + zp[..., None], 0, qmax))
    qv = qv.astype(np.uint8)
    packed = pack_bits(qv, bits)  # [N, kb, blob]
    if q.scheme is QuantScheme.symmetric:
        return packed, scales, None
    zp_u8 = zp.astype(np.uint8)
    pad = (-kb * bits) % 8 // bits  # nibbles that fill a row's last byte
    if pad:
        zp_u8 = np.concatenate([zp_u8, np.zeros((n, pad), np.uint8)], axis=1)
    return packed, scales, pack_bits(zp_u8, bits)


def pack_bits(v: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values < 2^bits along the last axis -> bytes, first value in the low bits."""
    if bits == 8:
        return np.ascontiguousarray(v, dtype=np.uint8)
    if bits == 4:
        return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)
    raise ValueError(f"packing {bits}-bit values: only 4 and 8")


def initializer_parts(name: str, q: QuantSettings, dtype: DType) -> list[tuple[str, int]]:
    """(initializer name, ONNX element type) of a quantized weight, in MatMulNBits input order."""
    parts = [(f"{name}.q{q.bits}", TensorProto.UINT8), (f"{name}.scales", TensorProto.FLOAT if dtype is DType.float32 else TensorProto.FLOAT16)]
    if q.scheme is QuantScheme.asymmetric:
        parts.append((f"{name}.zero_points", TensorProto.UINT8))
    return parts


def quantized_arrays(name: str, t, q: QuantSettings, dtype: DType) -> list[tuple[str, int, np.ndarray]]:
    """The initializers (name, element type, array) of weight `t` ([N, K] float tensor or array)."""
    w = t.detach().to("cpu").float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
    packed, scales, zp = quantize_rtn(w, q, dtype)
    arrays = [packed, scales] + ([zp] if zp is not None else [])
    return [(n, e, a) for (n, e), a in zip(initializer_parts(name, q, dtype), arrays, strict=True)]


def matmul_nbits(ctx, x: str, fulls: list[str], concat_name: str | None = None) -> str:
    """x @ W^T through MatMulNBits, W = archc parameters `fulls` ([out, in] each) stacked along out."""
    from exporters.onnx_export import WeightRef

    tied = ctx.graph.tied()
    fulls = [tied.get(f, f) for f in fulls]
    name = concat_name or fulls[0]
    key = f"{name}#quant"
    n = k = 0
    for full in fulls:
        node, local = _owner(ctx.graph, full)
        shape = ctx.graph.node(node)["params"][local]
        n, k = n + shape[0], shape[1]
    if key not in ctx._weight_names:
        ctx.weights.append(WeightRef(name, tuple(fulls) if len(fulls) > 1 else fulls[0], (n, k), False, quant=ctx.quant))
        ctx._weight_names.add(key)
    inputs = [x] + [part for part, _ in initializer_parts(name, ctx.quant, ctx.dtype)]
    return ctx.op("MatMulNBits", inputs, domain=MS, K=k, N=n, bits=ctx.quant.bits, block_size=ctx.quant.block_size,
                  accuracy_level=ctx.quant.accuracy_level)


def _owner(graph, full: str):
    from exporters.onnx_weights import param_owner

    return param_owner(graph, full)
