"""The runner's CUDA-graph decode path, run on the CPU without capture (io_binding="static"): fixed
buffers bound once per (batch, max_len), a max_len-wide attention_mask that is 0 past the current
length, ids / positions updated in place, the stepper reused across generate calls. It must give the
same tokens as greedy decoding of the PyTorch module (an independent implementation), with padding,
for shared-cache models, and the last-position slicer must return exactly logits[:, -1:]."""

from __future__ import annotations

import numpy as np
import pytest

import onnxruntime as ort

import archc  # noqa: E402
from archc.runner import Session  # noqa: E402
from conftest import tiny_spec  # noqa: E402
from exporters.onnx_export import export  # noqa: E402
from exporters.torch_module import build_module, greedy_generate  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]


def torch_greedy(graph, prompts, n_new):
    return greedy_generate(build_module(graph), graph, prompts, n_new)


@pytest.fixture(scope="module", params=["llama", "mistral", "palm"])
def shared_model(request, tmp_path_factory):
    graph = archc.compile(tiny_spec(request.param))
    d = tmp_path_factory.mktemp("static") / request.param
    export(graph, d, target="cuda", fused_fp32=True)
    return graph, d


def test_fixed_buffer_decode_matches_pytorch(shared_model):
    graph, d = shared_model
    s = Session(d, device="cpu", io_binding="static")
    assert s.kv_cache == "shared" and not s.cuda_graph
    want = torch_greedy(graph, PROMPTS, 6)
    assert s.generate(PROMPTS, 6).ids == want
    assert s.generate(PROMPTS, 6).ids == want  # the same stepper (buffers, binding) again
    assert len(s._steppers) == 1
    assert s.generate([[3, 4, 5]], 4).ids == torch_greedy(graph, [[3, 4, 5]], 4)  # another shape
    assert len(s._steppers) == 2


def test_fixed_buffer_mask_is_full_width(shared_model, monkeypatch):
    """The decode step really is fed the max_len-wide mask (so the shapes a graph captures stay fixed)."""
    _, d = shared_model
    s = Session(d, device="cpu", io_binding="static")
    widths = []
    orig = type(s._static_stepper(2, 11))._fixed_step

    def spy(self, ids, mask, positions, lens):
        out = orig(self, ids, mask, positions, lens)
        widths.append(self.fixed.bound_shape("attention_mask")[1])
        return out

    monkeypatch.setattr(type(s._static_stepper(2, 11)), "_fixed_step", spy)
    s.generate(PROMPTS, 6)
    assert widths == [11] * 5


def test_last_position_slicer():
    s = Session.__new__(Session)
    s._slicer = None
    s.sess = type("S", (), {"get_providers": lambda self: ["CPUExecutionProvider"]})()
    x = np.random.default_rng(0).standard_normal((3, 7, 11)).astype(np.float32)
    got = s.last_position(ort.OrtValue.ortvalue_from_numpy(x))
    assert got.shape == (3, 1, 11) and np.array_equal(got, x[:, -1:])
