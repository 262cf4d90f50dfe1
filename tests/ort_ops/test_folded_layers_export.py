"""`--kernels archc` folds (exporters/onnx_archc_folds.py): a LLaMA-style layer as archc.Linear(q|k|v, gamma),
GroupQueryAttention, archc.Linear(o, + residual), archc.GatedMLP(gamma), archc.Linear(down, + residual): no norm kernel
inside the layers. Run on the CPU (the library's CPU kernels), tiny fp16 models, dense and int4, against

(a) archc's PyTorch module (fp32) on the same weights (int4: quantized by archc and dequantized by the numpy dequantizer
    written from MatMulNBits's specification): a left-padded prefill of 5 tokens (batch 2: M = 10 rows) and 3 cached
    decode steps (M = 2), and batch 1 (decode M = 1); the greedy tokens equal the --kernels onnxruntime export's;
(b) the graph's structure: ops per layer in order, gamma inputs the norms' weights, epsilon the spec's, residual inputs
    the skip streams, no SkipSimplifiedLayerNormalization anywhere, one SimplifiedLayerNormalization (the final norm);
(c) negative controls: the same export with the gamma inputs dropped, or the residual inputs dropped, fails (a)'s bound
    by far (norm weights drawn away from 1 so that gamma matters);
(d) what the folds must refuse (a LayerNorm, a norm bias, a non-SwiGLU MLP, biased projections, a parallel block with a
    LayerNorm) still exports, matches the module, and says why in the lowering record; a parallel block with an RMSNorm
    folds its norm into both branches and chains both projections' residual inputs.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

import archc
from archc.quant import QuantKind, QuantSettings
from conftest import tiny_spec
from exporters.onnx_export import build_graph, export
from exporters.torch_module import build_module
from ort_ops_build import cpu_library, export_session, max_err
from ort_steps import run_ort, run_torch
from tests.emit_onnx.test_qmoe_mlp import MLP_GAIN, dequantized_state

INT4 = QuantSettings(QuantKind.int4)
# max |logits - ref| / max |ref| over real positions, fp16 activations against the fp32 module; the existing --kernels
# archc export tests' bounds for the same comparison (tests/ort_ops/test_gated_mlp*_export.py).
ORACLE_TOL = 4e-3
CONTROL_MIN = 0.1
GREEDY_STEPS = 8
PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]
PER_LAYER = {None: ["Linear", "GroupQueryAttention", "Linear", "GatedMLP", "Linear"],
             INT4: ["LinearNBits", "GroupQueryAttention", "LinearNBits", "GatedMLPNBits", "LinearNBits"]}
COMPUTE = {"Linear", "LinearNBits", "GatedMLP", "GatedMLPNBits", "GroupQueryAttention", "MultiHeadAttention", "MatMul", "MatMulNBits",
           "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "LayerNormalization",
           "RMSNormalization", "Add", "Sum"}


def weights(graph, path: Path) -> dict[str, torch.Tensor]:
    """The seeded weights with the MLPs times MLP_GAIN (as the other --kernels archc tests, so an MLP mistake moves the
    logits), every norm weight drawn from U(0.5, 1.5) (the init's ones would make a dropped gamma invisible) and every
    bias from N(0, 0.05) (the init's zeros would make a lost bias invisible)."""
    from safetensors.torch import save_file

    from archc.weights import init_state

    state = init_state(graph)
    gen = torch.Generator().manual_seed(7)
    for k in state:
        if ".mlp." in k and k.endswith(".weight"):
            state[k] = state[k] * MLP_GAIN
        if "norm" in k and k.endswith(".weight"):
            state[k] = 0.5 + torch.rand(state[k].shape, generator=gen)
        if k.endswith(".bias"):
            state[k] = 0.05 * torch.randn(state[k].shape, generator=gen)
    save_file(state, str(path))
    return state


def layer_ops(m: onnx.ModelProto, layer: int) -> list[str]:
    return [n.op_type for n in m.graph.node if n.name.startswith(f"layers.{layer}.") and n.op_type in COMPUTE]


def oracle_errs(d: Path, spec, graph, module) -> dict:
    return {pads: max_err(run_ort(export_session(d), spec, steps=3, pads=pads, prompt=5),
                          run_torch(module, graph, steps=3, pads=pads, prompt=5)) for pads in ((0, 2), (0,))}


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of export `src` with `edit(node)` applied to every archc-domain node."""
    import shutil

    from archc.model_dir import ORT_OPS_FILE

    model = onnx.load(str(src / "model.onnx"))
    for n in model.graph.node:
        if n.domain == "archc":
            edit(n)
    dst.mkdir()
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    shutil.copyfile(src / ORT_OPS_FILE, dst / ORT_OPS_FILE)
    return dst


def gamma_at(n) -> int:
    return {"Linear": 3, "LinearNBits": 4, "GatedMLP": 2, "GatedMLPNBits": 3}[n.op_type]


def residual_at(n) -> int:
    return {"Linear": 2, "LinearNBits": 3}[n.op_type]


def drop_gamma(n) -> None:
    """The op without its norm: x straight into the projection (gamma and epsilon gone)."""
    if len(n.input) > gamma_at(n):
        ins = list(n.input)[:gamma_at(n)]
        while ins and ins[-1] == "":
            ins.pop()
        del n.input[:]
        n.input.extend(ins)
        kept = [a for a in n.attribute if a.name != "epsilon"]
        del n.attribute[:]
        n.attribute.extend(kept)


def drop_residual(n) -> None:
    """The projection without its residual input (the skip stream never added)."""
    if n.op_type in ("Linear", "LinearNBits") and len(n.input) > residual_at(n) and n.input[residual_at(n)]:
        n.input[residual_at(n)] = ""
        if len(n.input) == residual_at(n) + 1:
            del n.input[residual_at(n)]


@pytest.mark.parametrize("quant", [None, INT4], ids=["fp16", "int4"])
def test_structure(quant):
    """Without the library: the graph the folds make (ops per layer in order, the inputs they take)."""
    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    ctx = build_graph(graph, "cuda", "fp16", quant=quant, kernels="archc")
    m = helper.make_model(helper.make_graph(ctx.nodes, "m", [], []))
    for layer in range(spec.n_layers):
        assert layer_ops(m, layer) == PER_LAYER[quant], layer_ops(m, layer)
    ops = [n.op_type for n in ctx.nodes]
    assert "SkipSimplifiedLayerNormalization" not in ops and "RMSNormalization" not in ops
    assert ops.count("SimplifiedLayerNormalization") == 1 and ops.count("Add") == 3  # final norm; gqa_layout's arithmetic
    by_out = {o: n for n in ctx.nodes for o in n.output}
    for layer in range(spec.n_layers):
        p = f"layers.{layer}"
        qkv, o, gated, down = [n for n in ctx.nodes if n.name.startswith(p) and n.domain == "archc"]
        assert qkv.input[gamma_at(qkv)] == f"{p}.attn_norm.weight" and gated.input[gamma_at(gated)] == f"{p}.mlp_norm.weight"
        for n in (qkv, gated):
            assert {a.name: helper.get_attribute_value(a) for a in n.attribute}["epsilon"] == pytest.approx(spec.norm.eps)
        assert len(o.input) == residual_at(o) + 1 and len(down.input) == residual_at(down) + 1  # no gamma on o / down
        assert o.input[residual_at(o)] == qkv.input[0]  # the skip is the stream the attention norm read
        assert gated.input[0] == o.output[0] and down.input[residual_at(down)] == o.output[0]  # o's output is the sum
        assert by_out[down.input[0]] is gated
    low = ctx.lowering
    assert low["layers.0.attn_norm"].startswith("folded") and low["layers.0.mlp_residual"].startswith("folded")
    assert "not folded into archc ops: head reads it" in low["final_norm"]


def test_default_export_is_unchanged():
    """--kernels onnxruntime keeps SkipSimplifiedLayerNormalization and MatMul (bytes: tests/emit_onnx/test_export_bytes.py)."""
    spec = tiny_spec("llama")
    ctx = build_graph(archc.compile(spec), "cuda", "fp16")
    ops = [n.op_type for n in ctx.nodes]
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * spec.n_layers and not any(n.domain == "archc" for n in ctx.nodes)


@pytest.mark.parametrize("quant", [None, INT4], ids=["fp16", "int4"])
def test_folded_layers_match_the_module(tmp_path, quant):
    from archc.runner import Session

    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    w = tmp_path / "w.safetensors"
    state = weights(graph, w)
    export(graph, tmp_path / "op", target="cuda", dtype="fp16", weights=w, quant=quant, kernels="archc", ort_ops_lib=cpu_library())
    export(graph, tmp_path / "std", target="cuda", dtype="fp16", weights=w, quant=quant)
    m = onnx.load(str(tmp_path / "op" / "model.onnx"), load_external_data=False)
    assert layer_ops(m, 0) == PER_LAYER[quant]
    module = build_module(graph, weights=state if quant is None else dequantized_state(graph, state))
    errs = oracle_errs(tmp_path / "op", spec, graph, module)
    std = oracle_errs(tmp_path / "std", spec, graph, module)
    no_gamma = oracle_errs(edited(tmp_path / "op", tmp_path / "no_gamma", drop_gamma), spec, graph, module)
    no_res = oracle_errs(edited(tmp_path / "op", tmp_path / "no_res", drop_residual), spec, graph, module)
    print(f"folded vs module {errs}; standard export vs module {std}; controls: gamma dropped {no_gamma}, "
          f"residual dropped {no_res}")
    assert all(e <= ORACLE_TOL for e in errs.values()), errs
    assert all(e >= CONTROL_MIN for e in no_gamma.values()), no_gamma
    assert all(e >= CONTROL_MIN for e in no_res.values()), no_res
    tokens = {k: Session(tmp_path / k, device="cpu").generate(PROMPTS, GREEDY_STEPS).ids for k in ("op", "std")}
    assert tokens["op"] == tokens["std"] and all(len(t) == GREEDY_STEPS for t in tokens["op"]), tokens


# (library spec, --set, quant, {node: words its lowering record must hold}, ops per layer 0)
REFUSED = [
    ("llama", ["norm.kind=layernorm"], None,
     {"layers.0.attn_norm": "not folded into archc ops: layernorm", "layers.0.attn_residual": "folded"},
     ["LayerNormalization", "Linear", "GroupQueryAttention", "Linear", "LayerNormalization", "GatedMLP", "Linear"]),
    ("llama", ["norm.bias=true"], None, {"layers.0.mlp_norm": "not folded into archc ops: norm bias"},
     ["RMSNormalization", "Add", "Linear", "GroupQueryAttention", "Linear", "RMSNormalization", "Add", "GatedMLP", "Linear"]),
    ("llama", ["mlp.activation=geglu"], None,
     {"layers.0.mlp_norm": "not folded into archc ops: mlp: not archc.GatedMLP (activation geglu)",
      "layers.0.attn_norm": "folded"},
     ["Linear", "GroupQueryAttention", "Linear", "SimplifiedLayerNormalization", "MatMul", "MatMul", "Linear"]),
    ("llama", ["attention.qkv_bias=true"], None,
     {"layers.0.attn_norm": "attn: q|k|v not an archc Linear (q|k|v bias)", "layers.0.mlp_norm": "folded"},
     ["RMSNormalization", "MatMul", "Add", "GroupQueryAttention", "Linear", "GatedMLP", "Linear"]),
    ("llama", ["attention.out_bias=true"], None,
     {"layers.0.attn_residual": "not folded into an archc Linear: attn: o not an archc Linear (o bias)"},
     ["Linear", "GroupQueryAttention", "MatMul", "Add", "Add", "GatedMLP", "Linear"]),
    ("llama", ["mlp.bias=true"], None,
     {"layers.0.mlp": "not archc.GatedMLP: gate/up biases", "layers.0.mlp_residual": "down not an archc Linear (down bias)"},
     ["Linear", "GroupQueryAttention", "Linear", "SimplifiedLayerNormalization", "MatMul", "Add", "MatMul", "Add", "MatMul",
      "Add"]),
    ("llama", [], QuantSettings(QuantKind.int8),
     {"layers.0.attn": "MatMulNBits int8 sym b32 (q|k|v; not archc.Linear: quantization int8 sym b32; LinearNBits takes "
                       "int4 sym b32)", "layers.0.attn_norm": "q|k|v not an archc Linear"},
     ["RMSNormalization", "MatMulNBits", "GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization"]),
    ("palm", [], None, {"layers.0.norm": "layernorm", "layers.0.residual": "attn o, then mlp down"},
     ["LayerNormalization", "Linear", "GroupQueryAttention", "Linear", "GatedMLP", "Linear"]),
    ("palm", ["norm.kind=rmsnorm"], None,
     {"layers.0.norm": "folded (gamma and epsilon go to attn and mlp", "layers.0.residual": "attn o, then mlp down"},
     ["Linear", "GroupQueryAttention", "Linear", "GatedMLP", "Linear"]),
    # a parallel block whose MLP has biases: attn's o adds the skip, the MLP's output is added after it
    ("palm", ["mlp.bias=true"], None,
     {"layers.0.residual": "folded (added inside the archc Linear of attn o; no Add) + Add (mlp: down not an archc Linear"},
     ["LayerNormalization", "Linear", "GroupQueryAttention", "Linear", "MatMul", "Add", "MatMul", "Add", "MatMul", "Add", "Add"]),
    # MultiHeadAttention (ALiBi) takes the folded norm too: its q|k|v is one GEMM + Split
    ("bloom", ["norm.kind=rmsnorm", "norm.bias=false", "attention.qkv_bias=false", "attention.out_bias=false", "mlp.bias=false"],
     None, {"layers.0.attn": "archc:Linear (q|k|v, RMSNorm folded in)", "layers.0.attn_norm": "folded"},
     ["Linear", "Add", "MultiHeadAttention", "Linear", "SimplifiedLayerNormalization", "MatMul", "Linear"]),  # Add: ALiBi
    # gamma = 1 + w (NormScale.one_plus_weight): an Add on the initializer, folded by onnxruntime at session start
    ("gemma", [], None, {"layers.0.attn_norm": "folded", "layers.0.mlp_norm": "activation geglu_tanh"},
     ["Add", "Linear", "GroupQueryAttention", "Linear", "Add", "SimplifiedLayerNormalization", "MatMul", "MatMul", "Linear"]),
]


@pytest.mark.parametrize("name,sets,quant,words,ops", REFUSED, ids=[f"{n}:{','.join(s) or (q.short() if q else '-')}"
                                                                     for n, s, q, _, _ in REFUSED])
def test_what_the_folds_refuse_still_matches(tmp_path, name, sets, quant, words, ops):
    spec = tiny_spec(name, sets)
    graph = archc.compile(spec)
    w = tmp_path / "w.safetensors"
    state = weights(graph, w)
    res = export(graph, tmp_path / "op", target="cuda", dtype="fp16", weights=w, quant=quant, kernels="archc",
                 ort_ops_lib=cpu_library())
    for node, want in words.items():
        assert want in res.lowering[node], (node, res.lowering[node])
    m = onnx.load(str(tmp_path / "op" / "model.onnx"), load_external_data=False)
    assert layer_ops(m, 0)[:len(ops)] == ops, layer_ops(m, 0)
    module = build_module(graph, weights=state if quant is None else dequantized_state(graph, state, quant))
    errs = oracle_errs(tmp_path / "op", spec, graph, module)
    print(f"{name} {sets}: vs module {errs}")
    assert all(e <= ORACLE_TOL for e in errs.values()), errs


@pytest.mark.parametrize("quant,held,quantized", [
    (None, "GatedMLP in 2 MLPs, Linear in 4 components", {}),
    (INT4, "GatedMLPNBits in 2 MLPs, LinearNBits in 4 components", {"GatedMLPNBits": 2, "LinearNBits": 4}),
    (QuantSettings(QuantKind.int8), "none named in the lowering", {"MatMulNBits": 4}),
], ids=["fp16", "int4", "int8"])
def test_compile_summary_names_the_ops(quant, held, quantized):
    """`archc compile`'s `archc ops:` and `quantized:` words, from the lowering record (a node may name two ops: an
    MLP's GatedMLP and its down's Linear). int8: archc's ops take none of it, MatMulNBits all of it."""
    from archc.commands.onnx_cmds import archc_ops_held
    from archc.quant import quantized_ops

    ctx = build_graph(archc.compile(tiny_spec("llama")), "cuda", "fp16", quant=quant, kernels="archc")
    assert archc_ops_held(ctx.lowering) == held
    assert quantized_ops(ctx.lowering) == quantized
