"""archc.Linear and archc.LinearNBits, and the optional gamma (RMSNorm folded in front) of all four archc ops
(exporters/ort_ops/gated_mlp.cc), alone in onnxruntime, CPU kernels, against numpy in float64 written from the
definitions:

    RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", eq. 4, with the epsilon inside the root as
    LLaMA-family models have it): xn = x / sqrt(mean_K(x^2) + epsilon) * gamma
    SwiGLU (Shazeer 2020, eq. 5 without the down projection): silu(xn Wg^T) * (xn Wu^T), silu(z) = z * sigmoid(z)
    Linear: xn W^T + residual, W [N, K] in torch's Linear layout

the int4 weights read from the documented MatMulNBits layout (test_gated_mlp_nbits_op.dequant). Negative controls,
each far off: the norm dropped, gamma ignored (a norm with gamma = 1), the residual dropped, a norm applied where the
node has no gamma, and a large epsilon (1.0) in place of 1e-5 on small x.

Tolerance: fp32 accumulation and one fp16 rounding of y, as tests/ort_ops/test_gated_mlp_op.py."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_gated_mlp_nbits_op import dequant

from ort_ops_build import cpu_session as session
from ort_ops_build import op_model

TOL = 2e-3  # max |y - ref| / max |ref|; measured (onnxruntime 1.31.1, CPU): 1.2e-4 .. 4.8e-4
CONTROL_MIN = 0.1  # measured: 0.27 (a norm where there is none, residual present) .. 770
EPS = 1e-5
BLOCK = 16

# op -> (int4 weight?, gated?)
OPS = {"GatedMLP": (False, True), "GatedMLPNBits": (True, True), "Linear": (False, False), "LinearNBits": (True, False)}


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma.astype(np.float64)


def reference(op: str, xn: np.ndarray, w: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    """y from the (already normed, or not) float64 xn and the float64 weight."""
    _, gated = OPS[op]
    if gated:
        F = w.shape[0] // 2
        g = xn @ w[:F].T
        return g / (1.0 + np.exp(-g)) * (xn @ w[F:].T)
    y = xn @ w.T
    return y if residual is None else y + residual.astype(np.float64)


def rel(y, ref) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def value(name: str, elem=TensorProto.FLOAT16):
    return helper.make_tensor_value_info(name, elem, None)


class Case:
    """One node of `op` with its feeds: x [*x_shape, K], a random weight of N outputs, residual and gamma where asked."""

    def __init__(self, op: str, x_shape: tuple, K: int, N: int, *, residual: bool, gamma: bool, eps: float | None = EPS,
                 x_scale: float = 3.0, seed: int = 0):
        nbits, gated = OPS[op]
        rng = np.random.default_rng(seed)
        rows = 2 * N if gated else N
        self.op, self.K = op, K
        self.feeds = {"x": (rng.standard_normal((*x_shape, K)) * x_scale).astype(np.float16)}
        inputs = [value("x")]  # shapes left open: the bad-input tests feed the op shapes it must refuse itself
        attrs = {} if eps is None else {"epsilon": eps}
        if nbits:
            kb = -(-K // BLOCK)
            self.feeds["b"] = rng.integers(0, 256, (rows, kb, BLOCK // 2), dtype=np.uint8)
            self.feeds["scales"] = (rng.uniform(0.5, 1.5, (rows, kb)) / (4 * np.sqrt(K))).astype(np.float16)
            inputs += [value("b", TensorProto.UINT8), value("scales")]
            names = ["x", "b", "scales"]
            attrs.update(K=K, bits=4, block_size=BLOCK)
            self.w = dequant(self.feeds["b"], self.feeds["scales"], K)
        else:
            self.feeds["w"] = (rng.standard_normal((rows, K)) / np.sqrt(K) * 2).astype(np.float16)
            inputs.append(value("w"))
            names = ["x", "w"]
            self.w = self.feeds["w"].astype(np.float64)
        if not gated:
            names.append("residual" if residual else "")
        if residual:
            # of the normed product's size (~|gamma| ~ 1.3; x_scale as large without a norm): residual dropped is O(1) off
            size = np.sqrt((self.w ** 2).sum(1).mean()) * (1.3 if gamma else x_scale)
            self.feeds["residual"] = (rng.standard_normal((*x_shape, N)) * size).astype(np.float16)
            inputs.append(value("residual"))
        names.append("gamma" if gamma else "")
        if gamma:  # both signs, away from 1: gamma ignored is far off
            self.feeds["gamma"] = (rng.uniform(0.5, 2.0, K) * rng.choice([-1.0, 1.0], K)).astype(np.float16)
            inputs.append(value("gamma"))
        while names[-1] == "":  # trailing absent inputs dropped, as an exporter writes them
            names.pop()
        self.names = names
        self.model = op_model(helper.make_node(op, names, ["y"], domain="archc", **attrs), inputs, op)

    def run(self, **feeds) -> np.ndarray:
        return session(self.model).run(None, {**self.feeds, **feeds})[0]

    def ref(self, *, norm: bool | None = None, gamma: np.ndarray | None = None, residual: bool = True, eps: float = EPS):
        """The reference: normed when the case has gamma (or as `norm` says), with `gamma` in place of the case's."""
        x = self.feeds["x"]
        has_gamma = "gamma" in self.feeds
        if norm if norm is not None else has_gamma:
            xn = rms_norm(x, gamma if gamma is not None else self.feeds.get("gamma", np.ones(self.K)), eps)
        else:
            xn = x.astype(np.float64)
        return reference(self.op, xn, self.w, self.feeds.get("residual") if residual else None)


SHAPES = {"M1": (1, 1), "M3": (3,), "B2xS3": (2, 3), "M17": (17,)}
VARIANTS = {  # op -> the (residual, gamma) combinations it takes
    "GatedMLP": [(False, False), (False, True)], "GatedMLPNBits": [(False, False), (False, True)],
    "Linear": [(False, False), (True, False), (False, True), (True, True)],
    "LinearNBits": [(False, False), (True, False), (False, True), (True, True)]}
CASES = [pytest.param(op, s, K, r, g, id=f"{op}-{s}-K{K}" + "-residual" * r + "-gamma" * g)
         for op in OPS for s in SHAPES for K in (64, 45) for r, g in VARIANTS[op]]


@pytest.mark.parametrize("op,shape,K,residual,gamma", CASES)
def test_matches_the_definitions(op, shape, K, residual, gamma):
    x_shape = SHAPES[shape]
    N = 13 if not OPS[op][1] else 20  # Linear: an odd N (no gate/up halves to keep even)
    c = Case(op, x_shape, K, N, residual=residual, gamma=gamma, seed=sum(x_shape) * K + 2 * residual + gamma)
    y = c.run()
    assert y.shape == (*x_shape, N) and y.dtype == np.float16
    err = rel(y, c.ref())
    controls = {}
    if gamma:
        controls["norm dropped"] = rel(y, c.ref(norm=False))
        controls["gamma ignored"] = rel(y, c.ref(gamma=np.ones(K)))
    else:
        controls["norm without gamma"] = rel(y, c.ref(norm=True))
    if residual:
        controls["residual dropped"] = rel(y, c.ref(residual=False))
    print(f"{op} {shape} K {K} {c.names}: {err:.2e}; controls {controls}")
    assert err <= TOL, err
    assert all(v >= CONTROL_MIN for v in controls.values()), controls


@pytest.mark.parametrize("op", list(OPS))
def test_epsilon_is_the_attribute(op):
    """Small x (mean square ~2.5e-3), where epsilon 1.0 and 1e-5 give norms ~20x apart: the op follows its attribute."""
    for eps, wrong in ((EPS, 1.0), (1.0, EPS)):
        c = Case(op, (3,), 64, 12, residual=False, gamma=True, eps=eps, x_scale=0.05, seed=5)
        y = c.run()
        err, control = rel(y, c.ref(eps=eps)), rel(y, c.ref(eps=wrong))
        print(f"{op} epsilon {eps}: {err:.2e}; epsilon {wrong} control {control:.2f}")
        assert err <= TOL, err
        assert control >= CONTROL_MIN, control


def test_trailing_empty_optional_input():
    """[x, w, residual, ""] (gamma named empty rather than dropped) is the same node as [x, w, residual]."""
    c = Case("Linear", (3,), 32, 8, residual=True, gamma=False)
    node = helper.make_node("Linear", ["x", "w", "residual", ""], ["y"], domain="archc")
    y = session(op_model(node, [value(n) for n in c.feeds], "linear")).run(
        None, c.feeds)[0]
    assert rel(y, c.ref()) <= TOL


@pytest.mark.parametrize("op", ["Linear", "LinearNBits"])
def test_zero_rows(op):
    c = Case(op, (0,), 32, 8, residual=True, gamma=True)
    assert c.run().shape == (0, 8)


@pytest.mark.parametrize("op", list(OPS))
def test_gamma_of_the_wrong_length(op):
    c = Case(op, (2,), 32, 8, residual=False, gamma=True)
    with pytest.raises(Exception, match=rf"archc\.{op}: gamma \[31\] does not fit x \[2, 32\] \(want gamma \[K\], K = 32\)"):
        c.run(gamma=np.ones(31, np.float16))


@pytest.mark.parametrize("op", ["Linear", "LinearNBits"])
@pytest.mark.parametrize("shape", [(2, 7), (8,), (1, 2, 8)], ids=["columns", "broadcast-row", "extra-dim"])
def test_residual_not_of_y_shape(op, shape):
    c = Case(op, (2,), 32, 8, residual=True, gamma=False)
    want = rf"archc\.{op}: residual {_shape_re(shape)} is not y's shape \[2, 8\] \(x \[2, 32\] with N = 8 last; no broadcasting\)"
    with pytest.raises(Exception, match=want):
        c.run(residual=np.zeros(shape, np.float16))


def _shape_re(shape: tuple) -> str:
    return r"\[" + ", ".join(map(str, shape)) + r"\]"


@pytest.mark.parametrize("op", list(OPS))
def test_gamma_without_epsilon(op):
    c = Case(op, (2,), 32, 8, residual=False, gamma=True, eps=None)
    with pytest.raises(Exception, match=rf"archc\.{op}: gamma given without the float attribute epsilon"):
        c.run()
    assert Case(op, (2,), 32, 8, residual=False, gamma=False, eps=None).run().shape == (2, 8)  # no gamma: no epsilon needed


@pytest.mark.parametrize("eps", [-1e-5, float("nan")])
def test_bad_epsilon_fails_at_session_creation(eps):
    with pytest.raises(Exception, match=r"archc\.Linear: epsilon .* \(want a finite value >= 0\)"):
        Case("Linear", (2,), 32, 8, residual=False, gamma=True, eps=eps).run()


def test_linear_weight_shape_error_names_the_op():
    c = Case("Linear", (2,), 32, 8, residual=False, gamma=False)
    with pytest.raises(Exception, match=r"archc\.Linear: x \[2, 32\] and w \[8, 31\] do not fit \(want x \[\.\.\., K\], w \[N, K\]"):
        session(op_model(helper.make_node("Linear", ["x", "w"], ["y"], domain="archc"),
                         [value("x"), value("w")], "linear")).run(
            None, {"x": c.feeds["x"], "w": np.zeros((8, 31), np.float16)})
