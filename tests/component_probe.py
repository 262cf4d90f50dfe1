"""One forward of a whole tiny model in one emitter, returning the values of chosen graph nodes.

Shared by the per-component oracle tests (tests/emit_torch/test_oracles_torch.py,
tests/emit_onnx/test_oracles_onnx.py): a node's inputs and output are read off the same run, so a
component is checked on the inputs its emitter really gave it, against tests/numpy_refs.py.

- PyTorch: forward hooks on the node's module (modules sit at the nodes' names).
- ONNX: the node's value in the lowering (`Ctx.env`) becomes an extra graph output; the model runs
  in onnxruntime on the CPU. On the cuda target with every attention a GroupQueryAttention the
  stream between the inputs and the head is in the op's packed layout (real tokens first), so
  those runs use feeds without left padding, where the packed layout is the contract's order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from archc.graph import ComponentGraph, ComponentKind, PositionIds


def random_weights(graph: ComponentGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Every owned parameter, random (not archc's init): norm scales 1 + N(0, 0.3), biases N(0, 0.3),
    tables N(0, 1), projections N(0, 1/in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for full, shape, node in graph.params():
        kind = graph.node(node)["kind"]
        if full.endswith("bias"):
            v = 0.3 * rng.standard_normal(shape)
        elif kind == ComponentKind.norm.value:
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        elif len(shape) == 2 and kind in (ComponentKind.attention.value, ComponentKind.mlp.value, ComponentKind.head.value):
            v = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            v = rng.standard_normal(shape)
        out[full] = v.astype(np.float32)
    return out


def feeds(graph: ComponentGraph, batch: int = 2, seq: int = 6, pad: bool = True, seed: int = 1) -> dict[str, np.ndarray]:
    """input_ids, attention_mask (row 1 left-padded by 2 when `pad`), position_ids = cumsum(mask) - 1
    clamped at 0 (GLM: block positions 0, 0, 1, 2, ... in the second row), prefix_len."""
    rng = np.random.default_rng(seed)
    vocab = graph.settings("embed").vocab_size
    ids = rng.integers(0, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    if pad:
        mask[1, :2] = 0
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    f = {"input_ids": ids, "attention_mask": mask}
    layout = graph.model.position_ids
    if layout is PositionIds.flat:
        f["position_ids"] = pos
    elif layout is PositionIds.glm2d:
        block = np.clip(np.arange(seq)[None, :] - 2, 0, None).repeat(batch, 0).astype(np.int64)
        f["position_ids"] = np.stack([pos, block], 1)
    if "prefix_len" in graph.graph_inputs():
        f["prefix_len"] = np.array([3, 2], np.int64)[:batch]
    return f


def probe_torch(graph: ComponentGraph, weights: dict, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    from exporters.torch_module import build_module

    model = build_module(graph, weights={k: torch.from_numpy(v) for k, v in weights.items()})
    out: dict[str, np.ndarray] = {}
    hooks = []
    for n in names:
        if n in feeds:
            out[n] = feeds[n]
            continue

        def hook(_module, _args, result, n=n):
            if isinstance(result, tuple):  # rotary: (cos, sin) [B,1,S,d/2] -> the graph's [B,S,d/2,2] table
                result = torch.stack([t[:, 0] for t in result], dim=-1)
            out[n] = result.detach().float().numpy()

        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    with torch.no_grad():
        model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for h in hooks:
        h.remove()
    return out


def probe_onnx(graph: ComponentGraph, weights: dict, feeds: dict, names: list[str], target: str = "portable",
               fused_fp32: bool = False) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from archc.model_dir import DATA_FILE, MODEL_FILE
    from exporters.onnx_export import build_graph, make_model
    from exporters.onnx_weights import write_weights
    from exporters.onnx_lowering_portable import Deferred

    ctx = build_graph(graph, target, "fp32", fused_fp32=fused_fp32, next_token="none")
    probes = {}
    for n in names:
        if n in feeds:
            continue
        value = ctx.env.get(n)
        if isinstance(value, Deferred):
            value = value.get(ctx)
        if not isinstance(value, str):
            continue  # RotaryTables (read by attention, not a tensor), a residual no norm emitted
        folded = ctx.cuda_plan.bias_fold.get(n) if ctx.cuda_plan else None
        if folded:  # the cuda lowering adds this branch's output bias inside the next SkipLayerNormalization
            value = ctx.op("Add", [value, ctx.weight(f"{n}.{folded}")])
        probes[n] = f"probe/{n}"
        ctx.op("Identity", [value], out=[probes[n]])
        ctx.outputs.append(helper.make_tensor_value_info(probes[n], TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        inits = write_weights(ctx, Path(tmp) / DATA_FILE, lambda full: torch.from_numpy(weights[full]))
        model = make_model(ctx, inits)
        onnx.save(model, str(Path(tmp) / MODEL_FILE))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(Path(tmp) / MODEL_FILE), so, providers=["CPUExecutionProvider"])
        run_feeds = {}
        for i in sess.get_inputs():
            if i.name in feeds:
                run_feeds[i.name] = feeds[i.name]
            else:  # past_key_values.*: an empty past [B, kv_heads, 0, head_dim]
                b, kv, _, hd = i.shape
                run_feeds[i.name] = np.zeros((feeds["input_ids"].shape[0], kv, 0, hd), np.float32)
        values = sess.run(list(probes.values()), run_feeds)
    out = dict(zip(probes, values))
    out.update({n: feeds[n] for n in names if n in feeds})
    return out


EMITTERS = {
    # name: (probe function, feeds padded)
    "torch": (lambda g, w, f, n: probe_torch(g, w, f, n), True),
    "portable": (lambda g, w, f, n: probe_onnx(g, w, f, n, "portable"), True),
    "cuda": (lambda g, w, f, n: probe_onnx(g, w, f, n, "cuda"), True),  # fp32: MultiHeadAttention / portable attention
    "cuda_fused": (lambda g, w, f, n: probe_onnx(g, w, f, n, "cuda", fused_fp32=True), False),  # GroupQueryAttention on the CPU
}


def run(emitter: str, graph: ComponentGraph, names: list[str], seed: int = 0) -> tuple[dict, dict, dict]:
    """(node values, weights, feeds) of one forward in `emitter`."""
    fn, pad = EMITTERS[emitter]
    w, f = random_weights(graph, seed), feeds(graph, pad=pad)
    return fn(graph, w, f, names), w, f
