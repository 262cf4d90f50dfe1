"""Nodes per layer of the cuda target for the biased / MultiHeadAttention families (issue 6), and their
numbers with random biases.

Structure: BLOOM and GLM (MultiHeadAttention: ALiBi / prefix mask) get one q|k|v GEMM per layer with
the [bq; bk; bv] bias as the op's own `bias` input; an output projection's bias that feeds a residual
fused into SkipLayerNormalization is that op's `bias` input instead of an Add (all families with
biased linears and LayerNorm, GPT-2's GroupQueryAttention path included).
Numbers: the seeded init zeroes every bias, which would hide a bias added in the wrong place (a q/k
mix-up, a beta/bias slot mix-up, a residual sum without the bias), so the parity runs here load
random biases from a safetensors file, with negative controls that must fail the same comparison.
"""

from __future__ import annotations

import collections

import onnx
import pytest
import torch

import archc
from conftest import tiny_spec
from exporters.onnx_export import export
from exporters.torch_module import build_module
from ort_steps import real_positions, rel_err, run_ort, run_torch, session

TOL = 1e-4


def _model(d) -> onnx.ModelProto:
    return onnx.load(str(d / "model.onnx"), load_external_data=False)


def _layer_ops(m: onnx.ModelProto, i: int) -> collections.Counter:
    return collections.Counter(n.op_type for n in m.graph.node if n.name.startswith(f"layers.{i}."))


@pytest.mark.parametrize("name", ["bloom", "glm"])
def test_multi_head_attention_layer_nodes(name, tmp_path):
    spec = tiny_spec(name)
    res = export(archc.compile(spec), tmp_path / "m", target="cuda", dtype="fp16")
    m, D = _model(tmp_path / "m"), spec.d_model
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for i in range(spec.n_layers):
        a = f"layers.{i}.attn"
        assert res.lowering[a].startswith("cuda:MultiHeadAttention") and "q|k|v one GEMM + Split, bias inside the op" in res.lowering[a]
        # one q|k|v GEMM ([D, 3D]) and o, up, down: four MatMuls, no lone q/k/v projection
        mm = [n.input[1] for n in m.graph.node if n.op_type == "MatMul" and n.name.startswith(f"layers.{i}.")]
        assert len(mm) == 4 and mm.count(f"{a}.qkv.weight.T") == 1 and shapes[f"{a}.qkv.weight.T"] == (D, 3 * D)
        (mha,) = [n for n in m.graph.node if n.op_type == "MultiHeadAttention" and n.name.startswith(f"{a}/")]
        assert mha.input[3] == f"{a}.qkv.bias" and shapes[f"{a}.qkv.bias"] == (3 * D,)
        split = producer[mha.input[0]]
        assert split.op_type == "Split" and split.output[:] == mha.input[:3] and producer[split.input[0]].op_type == "MatMul"
    # the layer in one line: 12 nodes (was 18: three q/k/v MatMuls, three q/k/v Adds, o and down Adds)
    assert _layer_ops(m, 1) == {"MatMul": 4, "Split": 1, "MultiHeadAttention": 1, "Identity": 2, "SkipLayerNormalization": 2,
                                "Add": 1, "Gelu": 1}
    _assert_biases_in_skip_norms(m, spec, res.lowering)


def _assert_biases_in_skip_norms(m: onnx.ModelProto, spec, lowering: dict) -> None:
    """Every o / down bias is input 4 of a SkipLayerNormalization, none goes through an Add, and no
    skip norm reads an Add's output as its input."""
    producer = {o: n for n in m.graph.node for o in n.output}
    skips = [n for n in m.graph.node if n.op_type == "SkipLayerNormalization"]
    folded = [n.input[4] for n in skips if len(n.input) > 4]
    want = [f"layers.{i}.{b}" for i in range(spec.n_layers) for b in ("attn.o.bias", "mlp.down.bias")]
    assert sorted(folded) == sorted(want)
    assert not [n.name for n in m.graph.node if n.op_type == "Add" and set(n.input) & set(want)]
    assert all(producer[n.input[0]].op_type != "Add" for n in skips)
    assert lowering["layers.0.attn"].endswith("; o.bias added in the residual's SkipLayerNormalization")
    assert lowering["layers.0.mlp_norm"] == "cuda:SkipLayerNormalization (+ attn o.bias as its bias input)"


def test_gpt2_group_query_attention_path_folds_its_biases_too(tmp_path):
    spec = tiny_spec("gpt2")
    res = export(archc.compile(spec), tmp_path / "m", target="cuda", dtype="fp16")
    m = _model(tmp_path / "m")
    assert res.lowering["layers.0.attn"].startswith("cuda:GroupQueryAttention")
    _assert_biases_in_skip_norms(m, spec, res.lowering)
    assert _layer_ops(m, 1)["Add"] == 2  # the packed q|k|v bias (GroupQueryAttention has no bias input) and up


def test_rms_norm_gets_no_bias_input(tmp_path):
    """SkipSimplifiedLayerNormalization keeps its Add: onnxruntime's CPU kernel reads a bias at input 4
    while the op's schema has it at input 3 (it would be dropped). The numbers of this case with random
    biases: tests/emit_onnx/test_onnx_export.py::test_gated_mlp_with_random_biases."""
    res = export(archc.compile(tiny_spec("llama", ["mlp.bias=true"])), tmp_path / "m", target="cuda", dtype="fp16")
    m = _model(tmp_path / "m")
    assert all(len(n.input) <= 3 for n in m.graph.node if n.op_type == "SkipSimplifiedLayerNormalization")
    assert "added in" not in res.lowering["layers.0.mlp"]


# ---- numbers with random biases ----------------------------------------------------------------

CASES = {  # id: (spec, --set overrides, fused_fp32) and the attention lowering it exercises
    "bloom_mha_alibi": ("bloom", [], True),
    "glm_mha_prefix": ("glm", [], True),
    "gpt2_gqa": ("gpt2", [], True),
    "gpt1_post_norm_mha": ("gpt1", [], False),
    "neox_parallel_mha_rope_bias_add": ("gpt-neox", [], False),  # bias before RoPE; one of two branches folded
    "gpt2_sandwich_not_folded": ("gpt2", ["norm.placement=sandwich"], True),  # the branch is a post-norm
}


SHARP = ["init.std=0.2"]  # weights 10x the library's std: q.k products large enough that a q/k bias mix-up moves the logits


def _random_bias_state(graph, seed: int = 0) -> dict:
    """The seeded init with every bias (linear biases, LayerNorm betas) drawn from N(0, 1)."""
    from archc.weights import init_state

    state, gen = init_state(graph), torch.Generator().manual_seed(seed)
    for k in state:
        if k.endswith(".bias"):
            state[k] = torch.randn(state[k].shape, generator=gen)
    return state


def _export_state(graph, state: dict, d, fused_fp32: bool):
    from safetensors.torch import save_file

    d.mkdir()
    save_file(state, str(d / "w.safetensors"))
    return export(graph, d / "m", target="cuda", weights=d / "w.safetensors", fused_fp32=fused_fp32)


def _err(d, module, spec, graph, steps: int = 2) -> float:
    kw = dict(steps=steps, pads=(0, 2), prompt=5, seed=0)
    ours, ref = run_ort(session(d / "m"), spec, **kw), run_torch(module, graph, **kw)
    return max(rel_err(o[real_positions(f)], r[real_positions(f)]) for (f, o), (_, r) in zip(ours, ref))


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_biases_match_pytorch(case, tmp_path):
    name, extra, fused = CASES[case]
    spec = tiny_spec(name, extra + SHARP)
    graph = archc.compile(spec)
    state = _random_bias_state(graph)
    res = _export_state(graph, state, tmp_path / "a", fused)
    assert res.lowering["layers.0.attn"].startswith("cuda:")
    assert _err(tmp_path / "a", build_module(graph, weights=state), spec, graph) <= TOL


@pytest.mark.parametrize("case", ["bloom_mha_alibi", "gpt2_gqa"])
def test_negative_controls_misplaced_biases_fail(case, tmp_path):
    """The comparison above sees a bias in the wrong place: q and k biases swapped (what a wrong
    offset into MultiHeadAttention's [bq; bk; bv] would do), and the o / down biases dropped (what a
    skip norm ignoring its bias input, or leaving it out of the residual sum, would do)."""
    name, extra, fused = CASES[case]
    spec = tiny_spec(name, extra + SHARP)
    graph = archc.compile(spec)
    state = _random_bias_state(graph)
    module = build_module(graph, weights=state)
    swapped = dict(state)
    for i in range(spec.n_layers):
        swapped[f"layers.{i}.attn.q.bias"], swapped[f"layers.{i}.attn.k.bias"] = state[f"layers.{i}.attn.k.bias"], state[f"layers.{i}.attn.q.bias"]
    _export_state(graph, swapped, tmp_path / "swapped", fused)
    assert _err(tmp_path / "swapped", module, spec, graph, steps=1) > 1e-2
    dropped = {k: torch.zeros_like(v) if k.endswith(("o.bias", "down.bias")) else v for k, v in state.items()}
    _export_state(graph, dropped, tmp_path / "dropped", fused)
    assert _err(tmp_path / "dropped", module, spec, graph, steps=1) > 1e-2


@pytest.mark.parametrize("name", ["bloom", "glm"])
def test_bf16_takes_the_portable_attention(name, tmp_path):
    """onnxruntime registers MultiHeadAttention's CUDA kernel for float and float16 only: in bf16 the node
    would have no kernel on any provider, so the cuda target lowers it to ONNX Attention (fp16 keeps MHA)."""
    graph = archc.compile(tiny_spec(name))
    res = export(graph, tmp_path / "bf16", target="cuda", dtype="bf16")
    ops = collections.Counter(n.op_type for n in _model(tmp_path / "bf16").graph.node)
    assert ops["MultiHeadAttention"] == 0 and ops["Attention"] == graph.spec.n_layers
    assert all("no bf16 CUDA kernel" in res.lowering[a] for a in res.lowering if a.endswith(".attn"))
    export(graph, tmp_path / "fp16", target="cuda", dtype="fp16")
    assert collections.Counter(n.op_type for n in _model(tmp_path / "fp16").graph.node)["MultiHeadAttention"] == graph.spec.n_layers
