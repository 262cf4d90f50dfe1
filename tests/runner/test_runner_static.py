"""The runner's CUDA-graph decode path, run on the CPU without capture (io_binding="static"): fixed
buffers bound once per (batch, max_len), a max_len-wide attention_mask that is 0 past the current
length, ids / positions updated in place, the stepper reused across generate calls. It must give the
same tokens as greedy decoding of the PyTorch module (an independent implementation), with padding,
for shared-cache models, and the last-position slicer must return exactly logits[:, -1:].
Greedy decoding there runs in windows (steppers._Window: each step's ids are the previous step's
next_token, bound on the device; the host reads a window's tokens at once): windows longer, shorter and
not dividing the new tokens, a stop inside a window, and the one-step loop (decode_window=1) must all
give the module's tokens."""

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


@pytest.mark.parametrize("window", [1, 4, 16])
def test_fixed_buffer_decode_matches_pytorch(shared_model, window):
    graph, d = shared_model
    s = Session(d, device="cpu", io_binding="static", decode_window=window)
    assert s.kv_cache == "shared" and not s.cuda_graph
    want = torch_greedy(graph, PROMPTS, 6)
    assert s.generate(PROMPTS, 6).ids == want
    assert s.generate(PROMPTS, 6).ids == want  # the same stepper (buffers, binding) again
    assert len(s._steppers) == 1
    assert s.generate([[3, 4, 5]], 4).ids == torch_greedy(graph, [[3, 4, 5]], 4)  # another shape
    assert len(s._steppers) == 2


def test_window_stops_inside_a_window(shared_model):
    """A stop at the 4th new token of a 4-step window ending at the 5th: the ids end there, and the
    steps queued past the stop (their cache writes) do not disturb the next generate."""
    graph, d = shared_model
    s = Session(d, device="cpu", io_binding="static", decode_window=4)
    want = torch_greedy(graph, PROMPTS, 9)
    seen = []
    r = s.generate(PROMPTS, 9, on_token=lambda t: seen.append(t.copy()) or len(seen) == 4)
    assert r.ids == [row[:4] for row in want]
    assert s.generate(PROMPTS, 9).ids == want
    assert s._static_stepper(2, 14).window.captured == set()  # no CUDA graphs on the CPU: nothing to release


def test_window_steps_read_ids_from_the_device(tmp_path):
    """Negative control: the window's steps must take their ids from the previous step's next_token.
    With every step bound to read the window's first token row instead, the tokens differ. (LLaMA: the
    tiny PaLM repeats one token, which such a mistake would reproduce.)"""
    graph = archc.compile(tiny_spec("llama"))
    export(graph, tmp_path / "m", target="cuda", fused_fp32=True)
    want = torch_greedy(graph, PROMPTS, 6)
    assert all(len(set(row)) > 1 for row in want)  # the control can tell a chained step from a stale one
    s = Session(tmp_path / "m", device="cpu", io_binding="static", decode_window=5)
    assert s.generate(PROMPTS, 6).ids == want
    w = s._static_stepper(2, 11).window
    for io in w.io:  # every step reads row 0
        io.bind_input("input_ids", "cpu", 0, np.int64, [2, 1], w.tok_dev.data_ptr())
    assert s.generate(PROMPTS, 6).ids != want


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_decode_window_is_checked(shared_model, bad):
    from archc.errors import UserError

    _, d = shared_model
    with pytest.raises(UserError, match="decode_window"):
        Session(d, device="cpu", io_binding="static", decode_window=bad)


def test_window_masks_are_full_width(shared_model):
    """Every window step is bound the max_len-wide mask (so the shapes its graph captures stay fixed)."""
    _, d = shared_model
    s = Session(d, device="cpu", io_binding="static", decode_window=4)
    s.generate(PROMPTS, 6)
    w = s._static_stepper(2, 11).window
    assert [w.feeds.slots[(i, "attention_mask")][1] for i in range(4)] == [(2, 11)] * 4


def test_fixed_buffer_mask_is_full_width(shared_model, monkeypatch):
    """The one-step loop's decode step really is fed the max_len-wide mask (so the shapes a graph captures stay fixed)."""
    _, d = shared_model
    s = Session(d, device="cpu", io_binding="static", decode_window=1)
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
