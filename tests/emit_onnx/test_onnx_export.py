"""ONNX exporter: onnxruntime (CPU) logits against the PyTorch emitter for every library spec at a tiny
size, both targets, prefill with left padding and cached decode steps; checker with full shape
inference; byte-identical re-export; weights from a safetensors file; atomic output.

The `cuda` target runs here with fused_fp32=True: GroupQueryAttention and the Skip*Normalization ops
have fp32 CPU kernels, so the fused lowering is checked for numbers on the CPU (on CUDA those ops
take fp16/bf16, and an fp32 export falls back to the portable attention).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import torch
import onnxruntime as ort

import archc  # noqa: E402
from conftest import LIBRARY, tiny_spec  # noqa: E402
from archc import feeds as feeds_  # noqa: E402
from archc.components import PositionIds  # noqa: E402
from exporters.onnx_export import _export_interrupted_after, export  # noqa: E402
from exporters.torch_module import build_module  # noqa: E402
from ort_steps import real_positions, rel_err, run_ort, run_torch, session  # noqa: E402

TOL = 1e-4


def compare_steps(sess, module, spec, steps: int = 3, batch_pads=(0, 2), prompt: int = 5, seed: int = 0) -> float:
    """Prefill (left-padded batch) + `steps` cached single-token steps; max rel error over real positions."""
    kw = dict(steps=steps, pads=batch_pads, prompt=prompt, seed=seed)
    ours, ref = run_ort(sess, spec, **kw), run_torch(module, archc.compile(spec), **kw)
    return max(rel_err(o[real_positions(f)], r[real_positions(f)]) for (f, o), (_, r) in zip(ours, ref))


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("name", LIBRARY)
def test_logits_match_pytorch_emitter(name, target, tmp_path):
    spec = tiny_spec(name)
    graph = archc.compile(spec)
    res = export(graph, tmp_path / "m", target=target, fused_fp32=True)
    if target == "cuda":
        lowered = set(res.lowering.values())
        assert any(v.startswith("cuda:") for v in lowered), res.lowering
    err = compare_steps(session(tmp_path / "m"), build_module(graph), spec)
    assert err <= TOL, f"{name}/{target}: rel err {err:.2e}"


@pytest.mark.parametrize("target", ["portable", "cuda"])
def test_decode_past_the_sliding_window(target, tmp_path):
    """Mistral's window (16 at the tiny size) is crossed: 5 prompt tokens + 14 decode steps."""
    if "mistral" not in LIBRARY:
        pytest.skip("no mistral spec in specs/")
    spec = tiny_spec("mistral")
    assert spec.attention.sliding_window < 19
    graph = archc.compile(spec)
    export(graph, tmp_path / "m", target=target, fused_fp32=True)
    assert compare_steps(session(tmp_path / "m"), build_module(graph), spec, steps=14) <= TOL


@pytest.mark.parametrize("name", ["llama", "palm", "gemma"])
def test_cuda_target_fp32_fallbacks(name, tmp_path):
    """fp32 on the cuda target: MultiHeadAttention for MHA specs, the portable Attention for MQA/GQA."""
    spec = tiny_spec(name)
    graph = archc.compile(spec)
    res = export(graph, tmp_path / "m", target="cuda")
    mha = spec.attention.kv_heads == spec.attention.n_heads
    assert res.lowering["layers.0.attn"].startswith("cuda:MultiHeadAttention" if mha else "portable (")
    assert compare_steps(session(tmp_path / "m"), build_module(graph), spec, steps=2) <= TOL


def test_negative_control_other_seed_fails_the_comparison(tmp_path):
    """The comparison can fail: the same spec exported with another init seed."""
    spec = tiny_spec("llama")
    export(archc.compile(tiny_spec("llama", ["init.seed=1"])), tmp_path / "m")
    assert compare_steps(session(tmp_path / "m"), build_module(archc.compile(spec)), spec, steps=0) > 1e-2


def test_negative_control_padding_matters(tmp_path):
    """Left padding reaches the mask: feeding the torch module an all-ones mask must disagree."""
    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    export(graph, tmp_path / "m")
    sess, module = session(tmp_path / "m"), build_module(graph)
    ids = np.arange(10).reshape(2, 5) % spec.vocab_size
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": feeds_.positions(mask, 5, PositionIds.flat)}
    feeds.update({f"past_key_values.{i}.{t}": np.zeros((2, spec.attention.kv_heads, 0, spec.attention.head_dim), np.float32)
                  for i in range(spec.n_layers) for t in ("key", "value")})
    onnx_logits = sess.run(["logits"], feeds)[0]
    with torch.no_grad():
        wrong, _ = module(torch.tensor(ids), torch.ones(2, 5, dtype=torch.long), torch.tensor(feeds["position_ids"]))
    assert rel_err(onnx_logits[1, 2:], wrong.numpy()[1, 2:]) > 1e-3


VARIANTS = {  # axis values no library spec uses: (base spec, --set overrides)
    "sinusoidal": ("bloom", ["position.kind=sinusoidal"]),
    "nope": ("bloom", ["position.kind=none"]),
    "rope_interleaved": ("llama", ["position.style=interleaved"]),
    "rope_interleaved_prefix": ("llama", ["position.style=interleaved", "attention.mask=prefix"]),
    "rope_partial_interleaved_gqa": ("gpt-neox", ["position.style=interleaved", "attention.kv_heads=2"]),
    "sandwich_geglu_mqa": ("palm", ["norm.placement=sandwich", "mlp.activation=geglu"]),
    "swiglu_bias_left_padded_gqa": ("llama", ["mlp.bias=true"]),  # gate|up GEMM + concatenated bias
    "deepnorm_reglu_head_bias": ("gpt1", ["norm.placement=deepnorm", "mlp.activation=reglu", "embedding.head_bias=true",
                                          "embedding.output=untied", "embedding.multiplier=2.0"]),
}


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_axis_values_outside_the_library(variant, target, tmp_path):
    base, extra = VARIANTS[variant]
    spec = tiny_spec(base, extra)
    graph = archc.compile(spec)
    export(graph, tmp_path / "m", target=target, fused_fp32=True)
    assert compare_steps(session(tmp_path / "m"), build_module(graph), spec, steps=2) <= TOL


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("name", ["llama", "bloom"])
def test_half_precision_on_cpu(name, target, tmp_path):
    """fp16 export vs the fp32 PyTorch module (2e-2), where onnxruntime's CPU kernels take fp16."""
    dtype = "fp16"
    spec = tiny_spec(name)
    graph = archc.compile(spec)
    export(graph, tmp_path / "m", target=target, dtype=dtype)
    try:
        sess = session(tmp_path / "m")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxruntime's CPU EP has no {dtype} kernel for an op here: {str(e).splitlines()[0][:120]}")
    assert compare_steps(sess, build_module(graph), spec, steps=2) <= 2e-2


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("name", LIBRARY)
def test_checker_with_full_shape_inference(name, target, tmp_path):
    export(archc.compile(tiny_spec(name)), tmp_path / "m", target=target, dtype="fp16" if target == "cuda" else "fp32")
    onnx.checker.check_model(str(tmp_path / "m" / "model.onnx"), full_check=True)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dtypes_io_and_metadata(dtype, tmp_path):
    elem = {"fp32": 1, "fp16": 10, "bf16": 16}[dtype]
    res = export(archc.compile(tiny_spec("llama")), tmp_path / "m", target="cuda", dtype=dtype)
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(str(tmp_path / "m" / "model.onnx"), full_check=True)
    outs = {o.name: o.type.tensor_type.elem_type for o in m.graph.output}
    ins = [i.name for i in m.graph.input]
    assert list(outs)[0] == "logits" and outs["logits"] == 1  # float32 whatever the dtype
    assert outs["present.1.value"] == elem
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key_values.1.key" in ins
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["archc.lowering"]) == res.lowering
    want = ("cuda:MultiHeadAttention (not GroupQueryAttention: fp32 (its CUDA kernels take fp16/bf16); q|k|v one GEMM + Split)"
            if dtype == "fp32"
            else "cuda:GroupQueryAttention (packed qkv, rotary inside)")
    assert res.lowering["layers.0.attn"] == want
    assert meta["archc.kv_cache"] == ("concat" if dtype == "fp32" else "shared")
    # every parameter lives in model.onnx.data, once (q/k/v may be stacked into one initializer)
    n_params = sum(int(np.prod(shape)) for _, shape, _ in archc.compile(tiny_spec("llama")).params())
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sum(int(np.prod(t.dims)) for t in external) == n_params
    assert (tmp_path / "m" / "model.onnx.data").stat().st_size >= n_params * (4 if dtype == "fp32" else 2)


def test_genai_config(tmp_path):
    spec = tiny_spec("llama2-70b" if "llama2-70b" in LIBRARY else "llama")
    export(archc.compile(spec), tmp_path / "m", target="cuda", dtype="fp16")
    cfg = json.loads((tmp_path / "m" / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert dec["outputs"]["present_value_names"] == "present.%d.value"
    assert (dec["head_size"], dec["num_attention_heads"], dec["num_key_value_heads"], dec["num_hidden_layers"], dec["hidden_size"]) == (
        spec.attention.head_dim, spec.attention.n_heads, spec.attention.kv_heads, spec.n_layers, spec.d_model)
    assert cfg["model"]["context_length"] == spec.max_seq_len and cfg["model"]["vocab_size"] == spec.vocab_size
    assert cfg["search"]["past_present_share_buffer"] is True
    assert (tmp_path / "m" / "spec.yaml").exists()


def test_byte_identical_reexport_and_seed_changes_bytes(tmp_path):
    graph = archc.compile(tiny_spec("palm"))
    for d in ("a", "b"):
        export(graph, tmp_path / d, target="cuda", dtype="fp16")
    for f in ("model.onnx", "model.onnx.data", "spec.yaml", "genai_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    export(archc.compile(tiny_spec("palm", ["init.seed=7"])), tmp_path / "c", target="cuda", dtype="fp16")
    assert (tmp_path / "a" / "model.onnx.data").read_bytes() != (tmp_path / "c" / "model.onnx.data").read_bytes()


def test_weights_from_a_safetensors_file_of_archc_names(tmp_path):
    from safetensors.torch import save_file

    from archc.weights import init_state

    other = archc.compile(tiny_spec("gpt2", ["init.seed=3"]))
    save_file(init_state(other), str(tmp_path / "w.safetensors"))
    export(archc.compile(tiny_spec("gpt2")), tmp_path / "from_file", weights=tmp_path / "w.safetensors")
    export(other, tmp_path / "seeded")
    assert (tmp_path / "from_file" / "model.onnx.data").read_bytes() == (tmp_path / "seeded" / "model.onnx.data").read_bytes()


def test_interrupted_export_leaves_nothing(tmp_path):
    graph = archc.compile(tiny_spec("llama"))
    with pytest.raises(RuntimeError, match="simulated"):
        _export_interrupted_after(3, graph, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    # over an existing model: the old one stays whole
    export(graph, tmp_path / "m")
    before = {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()}
    with pytest.raises(RuntimeError, match="simulated"):
        _export_interrupted_after(3, archc.compile(tiny_spec("llama", ["init.seed=5"])), tmp_path / "m")
    assert {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("name", LIBRARY)
def test_model_directory_loads_back_as_its_spec(name, tmp_path):
    from archc.commands.common import load

    spec = tiny_spec(name)
    export(archc.compile(spec), tmp_path / "m")
    assert load(str(tmp_path / "m")) == spec


@pytest.mark.parametrize("gate_up", ["two_gemms", "one_gemm"])
def test_cuda_llama_stream_rotated_once_and_gate_up(tmp_path, monkeypatch, gate_up):
    """Structure of the cuda target for an all-GroupQueryAttention spec (the numbers are checked by
    test_logits_match_pytorch_emitter with a left-padded batch): the token stream enters the op's
    packed layout once (input_ids, position_ids: GatherElements) and leaves it once (GatherND in
    front of the head), instead of 3 GatherND per layer. Gated MLP, per GATE_UP: two_gemms (the
    default) has a [d_model, d_ff] GEMM each for gate and up and no Split; one_gemm has one input GEMM
    with a [d_model, 2 d_ff] weight holding gate then up, split in halves."""
    from exporters import onnx_lowering_cuda

    monkeypatch.setattr(onnx_lowering_cuda, "GATE_UP", onnx_lowering_cuda.GateUp(gate_up))
    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    res = export(graph, tmp_path / "m", target="cuda", dtype="fp16")
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    L, F = spec.n_layers, spec.mlp.d_ff
    assert ops.count("GatherND") == 1 and ops.count("GatherElements") == 2
    assert res.lowering["head"].startswith("cuda:GatherND")
    assert res.lowering["input_ids"].startswith("cuda:GatherElements") and res.lowering["attention_mask"] == "portable"
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    gemms = [shapes.get(n.input[1]) for n in m.graph.node if n.op_type == "MatMul"]
    if gate_up == "one_gemm":
        assert gemms.count((spec.d_model, 2 * F)) == L and (spec.d_model, F) not in gemms  # gate|up, no lone gate/up
        assert len(gemms) == 4 * L + 1 and ops.count("Split") == L  # q|k|v, o, gate|up, down per layer; head
        assert res.lowering["layers.0.mlp"].startswith("cuda:MatMul (gate|up")
    else:
        assert gemms.count((spec.d_model, F)) == 2 * L and (spec.d_model, 2 * F) not in gemms  # gate, up; no gate|up
        assert len(gemms) == 5 * L + 1 and "Split" not in ops  # q|k|v, o, gate, up, down per layer; head
        assert res.lowering["layers.0.mlp"] == "cuda:MatMul (gate and up, one GEMM each)"
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    assert [n.name for n in m.graph.node if not set(n.output) & used] == []  # no dead nodes
    # negative control: a spec that is not all-GroupQueryAttention keeps the stream in contract order
    res = export(archc.compile(tiny_spec("llama")), tmp_path / "fp32", target="cuda", dtype="fp32")
    m = onnx.load(str(tmp_path / "fp32" / "model.onnx"), load_external_data=False)
    assert not [n for n in m.graph.node if n.op_type in ("GatherND", "GatherElements")] and res.lowering["head"] == "portable"


@pytest.mark.parametrize("target", ["portable", "cuda"])
def test_gated_mlp_with_random_biases(target, tmp_path):
    """The seeded init zeroes biases, which would hide a mix-up of the concatenated gate|up bias:
    random biases from a safetensors file, with a negative control (the module without them)."""
    from safetensors.torch import save_file

    from archc.weights import init_state

    spec = tiny_spec("llama", ["mlp.bias=true"])
    graph = archc.compile(spec)
    state, gen = init_state(graph), torch.Generator().manual_seed(0)
    for k in state:
        if k.endswith(".bias"):
            state[k] = torch.randn(state[k].shape, generator=gen)
    save_file(state, str(tmp_path / "w.safetensors"))
    export(graph, tmp_path / "m", target=target, weights=tmp_path / "w.safetensors", fused_fp32=True)
    sess = session(tmp_path / "m")
    assert compare_steps(sess, build_module(graph, weights=state), spec, steps=2) <= TOL
    assert compare_steps(sess, build_module(graph), spec, steps=0) > 1e-2


def test_fused_fp32_is_fixed_for_the_whole_export():
    """fused_fp32 is set once, by the factory that builds the Ctx: a lowering cannot flip it between two
    attention nodes (assignment raises), and a Ctx cannot be made with it from outside."""
    from archc.spec import DType
    from exporters.onnx_export import Ctx, Target, build_graph

    graph = archc.compile(tiny_spec("llama"))
    for fused in (True, False):
        ctx = build_graph(graph, "cuda", "fp32", fused_fp32=fused)
        assert ctx.fused_fp32 is fused
        # the flag did what it says at every attention node (the same lowering at each)
        assert {("GroupQueryAttention" in ctx.lowering[n]) and "not GroupQueryAttention" not in ctx.lowering[n]
                for n in graph.nodes() if n.endswith(".attn")} == {fused}
        with pytest.raises(AttributeError):
            ctx.fused_fp32 = not fused
        assert ctx.fused_fp32 is fused
    with pytest.raises(TypeError):
        Ctx(graph, Target.cuda, DType.float32, fused_fp32=True)
