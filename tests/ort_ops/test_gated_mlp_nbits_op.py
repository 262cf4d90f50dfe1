"""archc.GatedMLPNBits (exporters/ort_ops/gated_mlp.cc) alone in onnxruntime, CPU kernel, against numpy written from the
byte layout exporters/quantize.py documents for com.microsoft MatMulNBits (not from archc's dequantizer):

    B uint8 [N, k_blocks, block_size / 2]: the 4-bit codes of one block along K, two a byte, the FIRST in the LOW nibble;
    scales [N, k_blocks] fp16; no zero points: symmetric, zero point 2^(bits-1) = 8;
    W[n, k] = (q[n, k] - 8) * scales[n, k // block_size]; K not a whole number of blocks: the last block is padded.

and then SwiGLU(x) = silu(x Wg^T) * (x Wu^T) (Shazeer 2020) over the stacked [Wg; Wu] (N = 2F). Negative controls:
the reference reading the HIGH nibble first, and with gate and up swapped, miss by far. The bytes archc writes for a
stacked gate|up (exporters/quantize.py quantized_arrays) run through the op too.

Tolerance: fp32 accumulation and one fp16 rounding of y, as GatedMLP (tests/ort_ops/test_gated_mlp_op.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from ort_ops_build import cpu_session as session
from ort_ops_build import op_model as single_op_model

TOL = 2e-3  # max |y - ref| / max |ref|
CONTROL_MIN = 0.1


def op_model(x_dims: list, K: int, F: int, block_size: int = 32, bits: int = 4, b_dims: list | None = None) -> bytes:
    kb = -(-K // block_size)
    node = helper.make_node("GatedMLPNBits", ["x", "b", "scales"], ["y"], domain="archc", K=K, bits=bits, block_size=block_size)
    return single_op_model(node, [
        helper.make_tensor_value_info("x", TensorProto.FLOAT16, x_dims),
        helper.make_tensor_value_info("b", TensorProto.UINT8, b_dims or [2 * F, kb, block_size // 2]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT16, [2 * F, kb])], "gated_mlp_nbits")


def dequant(b: np.ndarray, scales: np.ndarray, K: int, low_first: bool = True) -> np.ndarray:
    """[N, kb, bs/2] bytes + [N, kb] scales -> float64 [N, K], written from the documented layout."""
    N, kb, half = b.shape
    lo, hi = (b & 0x0F).astype(np.int64), (b >> 4).astype(np.int64)
    first, second = (lo, hi) if low_first else (hi, lo)
    q = np.empty((N, kb, 2 * half), np.int64)
    q[..., 0::2], q[..., 1::2] = first, second
    w = (q - 8).astype(np.float64) * scales.astype(np.float64)[..., None]
    return w.reshape(N, kb * 2 * half)[:, :K]


def swiglu(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    F = w.shape[0] // 2
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    g, u = x @ w[:F].T, x @ w[F:].T
    return g / (1.0 + np.exp(-g)) * u


def rel(y, ref) -> float:
    return float(np.abs(y.astype(np.float64).reshape(ref.shape) - ref).max() / np.abs(ref).max())


def random_weight(rng, F: int, K: int, block_size: int = 32):
    kb = -(-K // block_size)
    b = rng.integers(0, 256, (2 * F, kb, block_size // 2), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.5, (2 * F, kb)) / (4 * np.sqrt(K))).astype(np.float16)
    return b, scales


@pytest.mark.parametrize("x_shape", [(1,), (3,), (17,), (2, 3)], ids=["M1", "M3", "M17", "B2xS3"])
@pytest.mark.parametrize("K,block_size", [(64, 32), (80, 32), (64, 16)], ids=["K64", "K80-padded", "K64-b16"])
def test_matches_the_documented_layout(x_shape, K, block_size):
    F = 24
    rng = np.random.default_rng(sum(x_shape) * K + block_size)
    x = rng.standard_normal((*x_shape, K)).astype(np.float16)
    b, scales = random_weight(rng, F, K, block_size)
    y = session(op_model(["a"] * len(x_shape) + [K], K, F, block_size)).run(None, {"x": x, "b": b, "scales": scales})[0]
    assert y.shape == (*x_shape, F) and y.dtype == np.float16
    w = dequant(b, scales, K)
    err = rel(y, swiglu(x, w))
    controls = {"high nibble first": rel(y, swiglu(x, dequant(b, scales, K, low_first=False))),
                "gate/up swapped": rel(y, swiglu(x, np.concatenate([w[F:], w[:F]])))}
    print(f"{x_shape} K {K} b{block_size}: {err:.2e}; controls {controls}")
    assert err <= TOL, err
    assert all(c >= CONTROL_MIN for c in controls.values()), controls


def test_archc_quantized_gate_up_bytes():
    """The bytes archc writes for a stacked gate|up (what the export hands the op), against the same reference."""
    from archc.dtypes import DType
    from archc.quant import QuantKind, QuantSettings
    from exporters.quantize import quantized_arrays

    K, F = 64, 40
    rng = np.random.default_rng(7)
    wf = (rng.standard_normal((2 * F, K)) / np.sqrt(K)).astype(np.float32)
    (_, _, b), (_, _, scales) = quantized_arrays("w", wf, QuantSettings(QuantKind.int4), DType.float16)
    x = rng.standard_normal((5, K)).astype(np.float16)
    y = session(op_model(["m", K], K, F)).run(None, {"x": x, "b": b, "scales": scales})[0]
    w = dequant(b, scales, K)
    assert np.abs(w - wf).max() <= np.abs(wf).max() / 7  # the reference does read the weight back (a 4-bit grid of it)
    assert rel(y, swiglu(x, w)) <= TOL
    assert rel(y, swiglu(x, dequant(b, scales, K, low_first=False))) >= CONTROL_MIN


def test_zero_rows():
    b, s = random_weight(np.random.default_rng(0), 4, 32)
    y = session(op_model(["m", 32], 32, 4)).run(None, {"x": np.zeros((0, 32), np.float16), "b": b, "scales": s})[0]
    assert y.shape == (0, 4)


def test_bad_shapes_are_one_error_naming_the_op():
    s = session(op_model(["m", 32], 32, 4, b_dims=["n", "kb", "h"]))
    b, sc = random_weight(np.random.default_rng(0), 4, 32)
    with pytest.raises(Exception, match=r"archc\.GatedMLPNBits: x \[2, 32\], B \[8, 2, 16\] and scales \[8, 1\] do not fit K 32"):
        s.run(None, {"x": np.zeros((2, 32), np.float16), "b": np.zeros((8, 2, 16), np.uint8), "scales": sc})


@pytest.mark.parametrize("attrs,words", [({"bits": 8}, "bits 8"), ({"block_size": 24}, "block_size 24")])
def test_unsupported_attributes_fail_at_session_creation(attrs, words):
    with pytest.raises(Exception, match=rf"archc\.GatedMLPNBits: {words}"):
        session(op_model(["m", 48], 48, 4, **attrs))
