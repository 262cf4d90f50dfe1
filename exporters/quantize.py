"""Weight-only quantized projections: block-wise packing for onnxruntime's
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

QuantMethod.search (calibration-free, like llama.cpp's quantizers): per block, round-to-nearest on a
few shrunk ranges (the largest weights clip; the rest get a finer grid), symmetric also with the
largest weight on the short end (+7), and for each rounding the least-squares scale; the grid with
the least squared error of the block's reconstruction wins, round-to-nearest's own unless another is
better, so no block is worse than round-to-nearest. Same bytes for the same weights (no randomness,
no data).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from onnx import TensorProto

from archc.dtypes import DType
from archc.quant import QuantMethod, QuantScheme, QuantSettings

MS = "com.microsoft"
_NP = {DType.float32: np.float32, DType.float16: np.float16}


def scale_dtype(dtype: DType):
    if dtype in _NP:
        return _NP[dtype]
    raise ValueError(f"MatMulNBits scales in {dtype.value}: not supported (QuantSettings.check refuses bf16)")


def quantize(w: np.ndarray, q: QuantSettings, dtype: DType) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w float32 [N, K] -> (B uint8 [N, kb, blob], scales [N, kb] in dtype, zero_points uint8 [N, zp_cols] or None),
    the grid of each block chosen by q.method."""
    blocks = _blocks(w, q.block_size)
    if q.method is QuantMethod.rtn:
        scales, zp = _grid(blocks, q, dtype, 1.0)
        codes = _codes(blocks, scales, zp, q.bits)
    elif q.method is QuantMethod.search:
        scales, zp, codes = _search(blocks, q, dtype)
    else:
        raise ValueError(f"unknown QuantMethod {q.method!r}")
    return _packed(codes, scales, zp, q)


def quantize_rtn(w: np.ndarray, q: QuantSettings, dtype: DType) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round-to-nearest whatever q.method says (the baseline the search is measured against)."""
    return quantize(w, replace(q, method=QuantMethod.rtn), dtype)


def _blocks(w: np.ndarray, bs: int) -> np.ndarray:
    """[N, K] -> float32 [N, kb, bs], K padded with zeros to a whole block."""
    n, k = w.shape
    kb = math.ceil(k / bs)
    blocks = np.zeros((n, kb * bs), np.float32)
    blocks[:, :k] = w
    return blocks.reshape(n, kb, bs)


def _grid(blocks: np.ndarray, q: QuantSettings, dtype: DType, shrink: float, *, short_end: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scales [N, kb] in dtype, zero points float32 [N, kb]) of round-to-nearest on each block's range
    times `shrink` (1.0: the full range; below it, the largest weights clip to the end of the grid).
    `short_end` (symmetric only): the block's largest-magnitude weight lands on the grid's short end,
    +2^(bits-1) - 1, instead of -2^(bits-1)."""
    return _grid_of(_range(blocks, q), q, dtype, shrink, short_end=short_end)


def _range(blocks: np.ndarray, q: QuantSettings) -> tuple[np.ndarray, ...]:
    """What a block's grid is drawn from: symmetric (m,), its largest-magnitude weight (signed);
    asymmetric (lo, hi) = (min(w, 0), max(w, 0)). Each [N, kb] float32."""
    if q.scheme is QuantScheme.symmetric:
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        return (np.take_along_axis(blocks, idx, axis=-1)[..., 0],)
    if q.scheme is QuantScheme.asymmetric:
        return np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
    raise ValueError(f"unknown QuantScheme {q.scheme!r}")


def _grid_of(rng: tuple[np.ndarray, ...], q: QuantSettings, dtype: DType, shrink: float, *, short_end: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if short_end and q.scheme is not QuantScheme.symmetric:
        raise ValueError("short_end applies to the symmetric grid only")
    bits = q.bits
    qmax = (1 << bits) - 1
    f = np.float32(shrink)
    if q.scheme is QuantScheme.symmetric:
        m = rng[0] * f
        end = (1 << (bits - 1)) - 1 if short_end else -(1 << (bits - 1))
        scales = (m / np.float32(end)).astype(scale_dtype(dtype))
        zp = np.full(scales.shape, 1 << (bits - 1), np.float32)
    elif q.scheme is QuantScheme.asymmetric:
        lo, hi = rng[0] * f, rng[1] * f
        scales = ((hi - lo) / np.float32(qmax)).astype(scale_dtype(dtype))
        s32 = scales.astype(np.float32)
        safe = np.where(s32 == 0, np.float32(1), s32)
        zp = np.where(s32 == 0, np.float32(0), np.clip(np.rint(-lo / safe), 0, qmax)).astype(np.float32)
    else:
        raise ValueError(f"unknown QuantScheme {q.scheme!r}")
    return scales, zp


def _codes(blocks: np.ndarray, scales: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [N, kb, bs]: the nearest point of the stored grid (ties to even), clipped to [0, 2^bits - 1]."""
    s32 = scales.astype(np.float32)
    safe = np.where(s32 == 0, np.float32(1), s32)[..., None]
    qv = np.where(s32[..., None] == 0, zp[..., None], np.clip(np.rint(blocks / safe) + zp[..., None], 0, (1 << bits) - 1))
    return qv.astype(np.uint8)


# Fractions of the full range tried per block by QuantMethod.search (1.0 first: round-to-nearest itself),
# and, symmetric only, those tried with the largest weight on the grid's short end (+7 for int4). On
# 512 x 2048 Gaussian weights, int4 b32, fp16 scales, squared error relative to round-to-nearest:
# symmetric 0.968 with the least-squares scale alone, 0.945 adding the short end, 0.895 with these six
# grids, 0.892 with ten (shrinks to 0.75, four short-end ones) at 1.7x the time; Student-t(5) weights
# 0.916 (six) and 0.915 (ten). Asymmetric: 0.931 with these four shrinks and with six.
SEARCH_SHRINK = (1.0, 0.95, 0.9, 0.85)
SEARCH_SHORT_END = (1.0, 0.9)
SEARCH_ROWS = 1024  # rows per pass: the float64 working set stays near 1024 * K * 8 bytes * a few


def _search(blocks: np.ndarray, q: QuantSettings, dtype: DType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block, the grid with the least squared reconstruction error among: round-to-nearest on the
    range times each SEARCH_SHRINK factor (symmetric: also SEARCH_SHORT_END), and, for each of those
    roundings, the least-squares scale sum(w q') / sum(q'^2) (q' = code - zero point) stored in the
    compute dtype. Errors are exact for the stored scale: |w - q' s|^2 = sum(w^2) - 2 s sum(w q') +
    s^2 sum(q'^2), in float64. The round-to-nearest grid is the first candidate and is replaced only by
    one better by at least 1e-9 of the block's energy, so the result is never worse than round-to-nearest
    (float64 noise cannot flip that). A block's codes are the rounding against the winner's rounding
    scale, recomputed once at the end (rounding is a function of that scale and the zero point)."""
    n, kb, bs = blocks.shape
    sdt = scale_dtype(dtype)
    scales = np.empty((n, kb), sdt)
    zps = np.empty((n, kb), np.float32)
    codes = np.empty((n, kb, bs), np.uint8)
    for r0 in range(0, n, SEARCH_ROWS):
        b = blocks[r0:r0 + SEARCH_ROWS]
        w64 = b.astype(np.float64)
        energy = np.einsum("rjk,rjk->rj", w64, w64)
        margin = 1e-9 * energy
        best = None  # [error, stored scale, rounding scale, zero point], each [rows, kb]
        rng = _range(b, q)
        for shrink, short_end in _search_grids(q):
            s, zp = _grid_of(rng, q, dtype, shrink, short_end=short_end)
            qd = _centred_codes(b, s, zp, q)
            wq = np.einsum("rjk,rjk->rj", w64, qd)
            qq = np.einsum("rjk,rjk->rj", qd, qd, dtype=np.float64)
            fit = np.where(qq > 0, wq / np.where(qq > 0, qq, 1), 0).astype(sdt)
            for cand in (s, fit):
                s64 = cand.astype(np.float64)
                err = energy - 2 * s64 * wq + s64 * s64 * qq
                if best is None:  # round-to-nearest
                    best = [err, cand, s, zp]
                    continue
                take = err < best[0] - margin
                best = [np.where(take, new, old) for new, old in zip((err, cand, s, zp), best, strict=True)]
        _, stored, rounding, zp = best
        scales[r0:r0 + SEARCH_ROWS], zps[r0:r0 + SEARCH_ROWS] = stored, zp
        codes[r0:r0 + SEARCH_ROWS] = _codes(b, rounding, zp, q.bits)
    return scales, zps, codes


def _centred_codes(blocks: np.ndarray, scales: np.ndarray, zp: np.ndarray, q: QuantSettings) -> np.ndarray:
    """float32 code - zero point of _codes (same rounding, same clipping), without the uint8 round trip.
    A zero scale stores every code at the zero point: dividing by inf gives that 0 (weights are finite)."""
    s32 = scales.astype(np.float32)
    x = blocks / np.where(s32 == 0, np.float32(np.inf), s32)[..., None]
    np.rint(x, out=x)
    top = (1 << q.bits) - 1
    if q.scheme is QuantScheme.symmetric:  # one zero point for every block: scalar bounds are cheaper
        z = float(1 << (q.bits - 1))
        np.clip(x, -z, top - z, out=x)
    elif q.scheme is QuantScheme.asymmetric:
        np.clip(x, -zp[..., None], top - zp[..., None], out=x)
    else:
        raise ValueError(f"unknown QuantScheme {q.scheme!r}")
    return x


def _search_grids(q: QuantSettings) -> list[tuple[float, bool]]:
    """(shrink, short_end) of every range QuantMethod.search tries, round-to-nearest's (1.0, False) first."""
    if q.scheme is QuantScheme.symmetric:
        return [(f, False) for f in SEARCH_SHRINK] + [(f, True) for f in SEARCH_SHORT_END]
    if q.scheme is QuantScheme.asymmetric:  # the range already ends at both extremes; shrinking is all there is
        return [(f, False) for f in SEARCH_SHRINK]
    raise ValueError(f"unknown QuantScheme {q.scheme!r}")


def _packed(codes: np.ndarray, scales: np.ndarray, zp: np.ndarray, q: QuantSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    bits = q.bits
    packed = pack_bits(codes, bits)  # [N, kb, blob]
    if q.scheme is QuantScheme.symmetric:
        return packed, scales, None
    n, kb = scales.shape
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
    packed, scales, zp = quantize(w, q, dtype)
    arrays = [packed, scales] + ([zp] if zp is not None else [])
    return [(n, e, a) for (n, e), a in zip(initializer_parts(name, q, dtype), arrays, strict=True)]


def expert_arrays(name: str, t, q: QuantSettings, dtype: DType) -> list[tuple[str, int, np.ndarray]]:
    """quantized_arrays of weight `t` as one expert of a com.microsoft QMoE: the same bytes, B [N, kb, blob]
    as [1, N, kb * blob] and scales [N, kb] as [1, N, kb] (onnxruntime 1.31's fc1/fc2 layouts with
    weights_prepacked=0, checked by benchmarks/moe_mlp_probe.py). Symmetric only: no zero points."""
    if q.scheme is not QuantScheme.symmetric:
        raise ValueError(f"QMoE expert weights: symmetric only, not {q.scheme.value}")
    return [(n, e, a.reshape(1, a.shape[0], -1)) for n, e, a in quantized_arrays(name, t, q, dtype)]


def qmoe_weight(ctx, fulls: list[str], name: str) -> list[str]:
    """The initializers (B, scales) of one QMoE expert weight made of archc parameters `fulls` ([out, in]
    each): one parameter as it is (fc2 = down), or two interleaved row by row (fc1 = gate row i at 2i, up
    row i at 2i + 1: swiglu_fusion=1). Interleaving before quantizing gives the bytes interleaving after
    would: blocks run along K within a row, so each row's codes and scales depend on that row alone."""
    _register_quantized(ctx, fulls, name, expert=True)
    return [part for part, _ in initializer_parts(name, ctx.quant, ctx.dtype)]


def matmul_nbits(ctx, x: str, fulls: list[str], concat_name: str | None = None) -> str:
    """x @ W^T through MatMulNBits, W = archc parameters `fulls` ([out, in] each) stacked along out."""
    name = concat_name or ctx.graph.tied().get(fulls[0], fulls[0])
    n, k = _register_quantized(ctx, fulls, name, expert=False)
    ctx.nbits_nodes.add(ctx.scope)  # the lowering summary names MatMulNBits for this node (onnx_export.nbits_words)
    inputs = [x] + [part for part, _ in initializer_parts(name, ctx.quant, ctx.dtype)]
    return ctx.op("MatMulNBits", inputs, domain=MS, K=k, N=n, bits=ctx.quant.bits, block_size=ctx.quant.block_size,
                  accuracy_level=ctx.quant.accuracy_level)


def quantized_weight(ctx, fulls: list[str], name: str) -> tuple[int, int]:
    """Queue the MatMulNBits-layout weight `name` made of archc parameters `fulls` ([out, in] each, stacked along out)
    for a consumer other than MatMulNBits (archc.GatedMLPNBits reads the same B and scales); (N, K) of the whole.
    Once per name: a MatMulNBits on the same name shares the initializers."""
    return _register_quantized(ctx, fulls, name, expert=False)


def _register_quantized(ctx, fulls: list[str], name: str, *, expert: bool) -> tuple[int, int]:
    """Queue the quantized weight `name` made of archc parameters `fulls` ([out, in] each, tied names
    resolved) for write_weights, once per name and layout (a MatMulNBits B stacks them, a QMoE expert
    interleaves them: WeightRef.expert); (N, K) of the whole."""
    from exporters.onnx_export import WeightRef

    tied = ctx.graph.tied()
    fulls = [tied.get(f, f) for f in fulls]
    n = k = 0
    for full in fulls:
        node, local = _owner(ctx.graph, full)
        shape = ctx.graph.node(node)["params"][local]
        n, k = n + shape[0], shape[1]
    key = f"{name}#{'qmoe' if expert else 'quant'}"
    if key not in ctx._weight_names:
        ctx.weights.append(WeightRef(name, tuple(fulls) if len(fulls) > 1 else fulls[0], (n, k), False, quant=ctx.quant,
                                     expert=expert))
        ctx._weight_names.add(key)
    return n, k


def _owner(graph, full: str):
    from exporters.onnx_weights import param_owner

    return param_owner(graph, full)
