"""The shared-cache stepper keeps one IO binding for its prefill steps (the cache buffers bound once as
past and present, only the feeds and the logits / next_token outputs rebound each step). Reusing it
across generate calls must not leak anything from the previous call: other prompts of the same shape,
and a sampling call (logits to the host instead of next_token) between greedy ones, each give the
tokens of the PyTorch module's greedy decoding (an independent implementation). top_k = 1 samples the
argmax, so it must agree with greedy while taking the logits path."""

from __future__ import annotations

import pytest

import archc
from archc.runner import Session
from conftest import tiny_spec
from exporters.onnx_export import export
from exporters.torch_module import build_module, greedy_generate


@pytest.mark.parametrize("io_binding", ["static", True])
def test_prefill_binding_reused_across_calls(tmp_path, io_binding):
    graph = archc.compile(tiny_spec("llama"))
    export(graph, tmp_path / "m", target="cuda", fused_fp32=True)
    s = Session(tmp_path / "m", device="cpu", io_binding=io_binding)
    assert s.kv_cache == "shared"
    module = build_module(graph)
    a, b = [[5, 6, 7, 8, 9], [10, 11]], [[40, 41], [3, 2, 1, 30, 31]]  # same (batch, longest prompt)
    want_a, want_b = greedy_generate(module, graph, a, 6), greedy_generate(module, graph, b, 6)
    assert want_a != want_b  # negative control: the two prompt sets give different tokens
    assert s.generate(a, 6).ids == want_a
    assert s.generate(b, 6, top_k=1).ids == want_b  # logits path, same stepper
    assert s.generate(b, 6).ids == want_b
    assert s.generate(a, 6).ids == want_a
    if io_binding == "static":
        assert len(s._steppers) == 1 and s._steppers[(2, 11)].prefill_io is not None
