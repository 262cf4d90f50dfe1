"""Both ONNX lowerings, run in onnxruntime on the CPU, against one numpy oracle per axis value
(tests/oracle_cases.py, which enumerates the spec enums), each with negative controls.

Targets: portable; cuda in fp32 (MultiHeadAttention or the portable Attention, SkipLayerNormalization
fusions, gate|up in one GEMM); cuda with fused_fp32 (GroupQueryAttention's CPU kernel, fed without
left padding, see tests/component_probe.py)."""

from __future__ import annotations

import pytest

import component_probe as P
import oracle_cases as O

TOL = 1e-5  # float32 against float64 (observed: about 1e-6)
MISS = 1e-4  # a wrong variant is off by at least this much (GELU vs its tanh form: 1.6e-4)
TARGETS = ["portable", "cuda", "cuda_fused"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("oracle", sorted(O.ORACLES))
def test_component_matches_its_oracle_onnx(oracle, target):
    o = O.ORACLES[oracle]
    g = o.graph()
    node, names = O.probe_names(o, g)
    values, w, f = P.run(target, g, names)
    err, wrong = O.compare(o, values, w, f, g)
    assert err <= TOL, f"{oracle} ({target}): {node} off the reference by {err:.2e}"
    for name, e in wrong.items():
        assert e > MISS, f"{oracle} ({target}): negative control '{name}' matches too ({e:.2e})"


def test_an_emitter_bug_fails_its_oracle(monkeypatch):
    """Negative control on the harness itself: a lowering that computes exact GELU for the tanh form
    (the kind of slip both emitters could share) is caught by the gelu_tanh oracle."""
    from exporters import onnx_lowering_portable as portable

    exact = portable.activation

    def wrong(ctx, name, act, x):
        from archc.spec import Activation

        return exact(ctx, name, Activation.gelu if act is Activation.gelu_tanh else act, x)

    monkeypatch.setattr(portable, "activation", wrong)
    o = O.ORACLES["activation-gelu_tanh"]
    g = o.graph()
    _, names = O.probe_names(o, g)
    values, w, f = P.run("portable", g, names)
    err, _ = O.compare(o, values, w, f, g)
    assert err > MISS
