"""archc.GatedMLP (exporters/ort_ops/gated_mlp.cc) alone in onnxruntime, CPU kernel, against numpy written from the
definition: SwiGLU(x) = Swish_1(x W) * (x V) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 5 without the
down projection), Swish_1(z) = z * sigmoid(z), with W the gate rows and V the up rows of the op's one [2F, K] weight
(torch Linear layout: x W^T). The CUDA kernel computes the same (benchmarks/ort_ops_check.py checks it on a GPU).

Tolerance: the op accumulates in fp32 and rounds once to fp16, so |y - ref| <= a few fp16 ulps of |ref| (2^-11
relative) plus fp32 summation noise; the controls (gate and up swapped, SiLU dropped) are off by O(1)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from ort_ops_build import cpu_library
from ort_ops_build import cpu_session as session
from ort_ops_build import op_model as single_op_model

TOL = 2e-3  # max |y - ref| / max |ref|; measured (onnxruntime 1.31.1, CPU): 1.9e-4 .. 4.1e-4 (fp16 output rounding)
CONTROL_MIN = 0.1  # measured: 0.46 .. 1.9


def op_model(x_dims: list, K: int, F: int, w_dims: list | None = None) -> bytes:
    node = helper.make_node("GatedMLP", ["x", "w"], ["y"], domain="archc")
    return single_op_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, x_dims),
                                  helper.make_tensor_value_info("w", TensorProto.FLOAT16, w_dims or [2 * F, K])], "gated_mlp")


def swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Shazeer's FFN_SwiGLU inner product, in float64 from the fp16 values."""
    x, gate, up = (a.astype(np.float64) for a in (x, gate, up))
    a = x @ gate.T
    return a / (1.0 + np.exp(-a)) * (x @ up.T)


def rel(y, ref) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("x_shape", [(1, 1), (3,), (1, 17), (2, 3)], ids=["M1", "M3", "M17", "B2xS3"])
@pytest.mark.parametrize("K", [64, 44], ids=["K64", "K44"])
def test_matches_swiglu_definition(x_shape, K):
    F = 40
    rng = np.random.default_rng(sum(x_shape) * K)
    x = rng.standard_normal((*x_shape, K)).astype(np.float16)
    w = (rng.standard_normal((2 * F, K)) / np.sqrt(K) * 2).astype(np.float16)
    y = session(op_model(["a"] * (len(x_shape)) + [K], K, F)).run(None, {"x": x, "w": w})[0]
    assert y.shape == (*x_shape, F) and y.dtype == np.float16
    gate, up = w[:F], w[F:]
    err = rel(y, swiglu(x, gate, up))
    controls = {"gate/up swapped": rel(y, swiglu(x, up, gate)),
                "no SiLU": rel(y, (x.astype(np.float64) @ gate.T.astype(np.float64)) * (x.astype(np.float64) @ up.T.astype(np.float64)))}
    print(f"{x_shape} K {K}: {err:.2e}; controls {controls}")
    assert err <= TOL, err
    assert all(c >= CONTROL_MIN for c in controls.values()), controls


def test_zero_rows():
    y = session(op_model(["b", 8], 8, 4)).run(None, {"x": np.zeros((0, 8), np.float16), "w": np.ones((8, 8), np.float16)})[0]
    assert y.shape == (0, 4)


@pytest.mark.parametrize("w_shape,why", [((7, 8), "odd rows: no gate/up halves"), ((8, 6), "K differs from x's")])
def test_bad_weight_shape_is_one_error_naming_the_op(w_shape, why):
    s = session(op_model(["b", 8], 8, 4, w_dims=["r", "c"]))
    with pytest.raises(Exception, match=r"archc\.GatedMLP: x \[2, 8\] and w \[\d+, \d+\] do not fit"):
        s.run(None, {"x": np.zeros((2, 8), np.float16), "w": np.zeros(w_shape, np.float16)})


def test_library_reports_its_kernels():
    from exporters.ort_ops.build import OPS, info

    said = info(cpu_library())
    assert said == {"name": "archc-ort-ops", "version": "2", "ops": "GatedMLP,GatedMLPNBits,Linear,LinearNBits", "kernels": "cpu"}
    assert said["ops"] == ",".join(OPS)  # what build.library asks of a prebuilt library
