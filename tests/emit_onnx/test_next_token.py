"""The export's next_token output (the greedy pick on the device) and the runner's use of it.

The pick itself is checked in every ONNX parity test (tests/ort_steps.py asserts next_token ==
numpy argmax of the same run's last-position logits). Here: the option, the metadata, and that the
runner's greedy decoding reads next_token on each of its paths (host feeds, IO binding, fixed
buffers) and still gives the PyTorch module's greedy tokens; `--next-token none` gives the contract's
outputs only and the runner picks on the host, with the same tokens."""

from __future__ import annotations

import onnx
import pytest

import archc
from archc.runner import Session
from conftest import run_cli, tiny_spec
from exporters.onnx_export import export
from exporters.torch_module import build_module, greedy_generate

PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]  # left-padded batch


@pytest.fixture(scope="module", params=[("llama", "cuda"), ("bloom", "cuda"), ("glm", "portable")])
def models(request, tmp_path_factory):
    family, target = request.param
    graph = archc.compile(tiny_spec(family))
    root = tmp_path_factory.mktemp("nt")
    export(graph, root / "argmax", target=target, fused_fp32=True)
    export(graph, root / "none", target=target, fused_fp32=True, next_token="none")
    return graph, root


def test_outputs_and_metadata(models):
    _, root = models
    with_pick = onnx.load(str(root / "argmax" / "model.onnx"), load_external_data=False)
    plain = onnx.load(str(root / "none" / "model.onnx"), load_external_data=False)
    names = [o.name for o in with_pick.graph.output]
    assert names[0] == "logits" and names[-1] == "next_token"
    assert names[:-1] == [o.name for o in plain.graph.output]  # the contract's outputs, unchanged
    out = with_pick.graph.output[-1].type.tensor_type
    assert out.elem_type == onnx.TensorProto.INT64 and out.shape.dim[1].dim_value == 1
    meta = lambda m: {p.key: p.value for p in m.metadata_props}  # noqa: E731
    assert meta(with_pick)["archc.next_token"] == "argmax" and meta(plain)["archc.next_token"] == "none"


@pytest.mark.parametrize("io_binding", [None, True, "static"])
def test_greedy_reads_next_token_and_matches_pytorch(models, io_binding, monkeypatch):
    graph, root = models
    want = greedy_generate(build_module(graph), graph, PROMPTS, 5)
    s = Session(root / "argmax", device="cpu", io_binding=io_binding)  # "static": fixed buffers where the cache is shared
    picks = []
    monkeypatch.setattr(Session, "_pick", staticmethod(lambda logits, sampler: picks.append(1)))
    assert s.generate(PROMPTS, 5).ids == want
    assert not picks  # the host never picked: every token came from next_token
    monkeypatch.undo()
    plain = Session(root / "none", device="cpu", io_binding=io_binding)
    assert not plain.has_next_token and plain.generate(PROMPTS, 5).ids == want


def test_sampling_still_reads_logits(models):
    _, root = models
    a = Session(root / "argmax", device="cpu").generate(PROMPTS, 5, top_k=5, seed=3).ids
    b = Session(root / "none", device="cpu").generate(PROMPTS, 5, top_k=5, seed=3).ids
    assert a == b


def test_cli_rejects_unknown_choice(tmp_path, capsys):
    rc, _, err = run_cli(["compile", "llama", *[a for s in ("n_layers=1", "d_model=32", "attention.n_heads=2", "attention.kv_heads=1",
                                                             "mlp.d_ff=64", "vocab_size=50") for a in ("--set", s)],
                          "-o", str(tmp_path / "m"), "--next-token", "topk"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--next-token topk" in err and "argmax" in err and not (tmp_path / "m").exists()
