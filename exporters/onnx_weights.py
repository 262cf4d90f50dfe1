"""The exporter's weights: where they come from (the seeded init, a safetensors file of archc's
names, a Hugging Face directory), how each is cast and streamed into model.onnx.data, and reading
them back out of an `archc compile` directory (`archc export-hf DIR`). Apart from graph building
(exporters/onnx_export.py), which only records which parameters each initializer holds (WeightRef).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from onnx import TensorProto

from archc.dtypes import DType
from archc.errors import UserError
from archc.graph import ComponentGraph
from archc.model_dir import DATA_FILE, META_DTYPE, META_LOGITS, META_NEXT_TOKEN, META_QUANT, META_TARGET, MODEL_FILE

if TYPE_CHECKING:
    from exporters.onnx_export import Ctx

ALIGN = 64  # byte alignment of each tensor in model.onnx.data


def param_owner(graph: ComponentGraph, full: str) -> tuple[str, str]:
    """(node, local name) of a graph parameter's full name."""
    for name in graph.nodes():
        if full.startswith(name + "."):
            local = full[len(name) + 1 :]
            if local in graph.node(name)["params"]:
                return name, local
    raise KeyError(full)


def tensor_bytes(t, dtype: DType, transpose: bool) -> memoryview:
    """The tensor's bytes in the export dtype. The cast runs first, in torch (vectorised, multi-threaded,
    round-to-nearest-even like numpy's astype), so the transpose copies half the bytes; the result is
    a view of the tensor's own buffer (no tobytes copy)."""
    import torch

    t = t.detach().to("cpu")
    t = t.to(dtype.to_torch())
    if transpose:
        t = t.t()
    t = t.contiguous()
    if dtype is DType.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def weight_source(graph: ComponentGraph, weights: str | os.PathLike | None) -> Callable[[str], Any]:
    """A getter name -> float tensor, reading one tensor at a time.

    None: the seeded init (archc.weights, identical numbers to the PyTorch emitter). A safetensors
    file of archc's own names, or a Hugging Face directory (archc.hf)."""
    if weights is None:
        from archc.weights import init_tensor

        def seeded(full: str):
            node, local = param_owner(graph, full)
            return init_tensor(graph, node, local)

        return seeded
    import stat

    from archc.files import kind_of, stat_path

    path = Path(weights)
    st = stat_path(path, f"--weights {path}")  # a symlink loop or too long a name: its own words (was 'no such file')
    if st is None:
        raise UserError(f"--weights {path}: no such file or directory")
    if stat.S_ISREG(st.st_mode):
        return _safetensors_source(graph, path)
    if stat.S_ISDIR(st.st_mode):
        return _hf_source(graph, path)
    # a FIFO or device was told 'a directory must be a Hugging Face model'
    raise UserError(f"--weights {path}: is {kind_of(st.st_mode)}, not a regular file; give a safetensors file or a "
                    "Hugging Face model directory")


def _safetensors_source(graph: ComponentGraph, path: Path):
    from safetensors import safe_open

    from archc.files import refuse_duplicate_tensor_names

    refuse_duplicate_tensor_names(path, f"--weights {path}")  # safe_open keeps the last of two entries with one name
    try:
        f = safe_open(str(path), framework="pt")
        keys = set(f.keys())
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"--weights {path}: not a readable safetensors file ({e})") from None
    expected = {full for full, _, _ in graph.params()}
    missing = sorted(expected - keys)
    if missing:
        raise UserError(f"--weights {path}: missing {len(missing)} parameter(s), e.g. {missing[0]}; "
                        f"the file must use archc's parameter names (see `archc show`)")

    def get(full: str):
        t = f.get_tensor(full)
        node, local = param_owner(graph, full)
        want = tuple(graph.node(node)["params"][local])
        if tuple(t.shape) != want:
            raise UserError(f"--weights {path}: {full} has shape {tuple(t.shape)}, the spec needs {want}")
        return t.float()

    return get


def _hf_source(graph: ComponentGraph, path: Path):
    from archc import hf

    if not (path / "config.json").exists():
        raise UserError(f"--weights {path}: a directory must be a Hugging Face model (config.json + safetensors/bin files)")
    state = hf.load_weights(graph, path)  # {archc name: float32 tensor}, checked against the graph

    def get(full: str):
        if full not in state:
            raise UserError(f"--weights {path}: the checkpoint gives no {full}")
        return state.pop(full).float()  # drop each tensor once written: memory stays near one copy

    return get


def write_weights(ctx: Ctx, data_path: Path, get, progress: bool | None = None) -> list:
    """Stream every initializer into data_path; returns TensorProtos pointing into it.

    The next two initializers are drawn (seeded init or read) on worker threads while the current one
    is cast and written: torch releases the GIL, so drawing overlaps writing and each other. Each
    source parameter is its own task (a concatenated q|k|v or gate|up initializer is drawn part by part
    in parallel, then joined here). Only the initializers in flight are alive, so memory stays near one
    copy of the weights; each tensor's values depend only on its own name, and they are written in
    order, so the file is the same byte for byte."""
    from concurrent.futures import ThreadPoolExecutor

    def submit(ref):
        return [pool.submit(get, src) for src in (ref.source if isinstance(ref.source, tuple) else (ref.source,))]

    def joined(ref, futures):
        parts = [f.result() for f in futures]
        if len(parts) == 1:
            return parts[0]
        import torch

        if ref.expert:  # a QMoE fc1: gate and up interleaved row by row (WeightRef.expert)
            return torch.stack(parts, 1).reshape(-1, *parts[0].shape[1:])
        return torch.cat(parts, 0)

    import math

    from archc.progress import TensorProgress

    protos = []
    offset = 0
    refs = list(ctx.weights)
    ahead = 2  # initializers drawn ahead, in parallel (the seeded draw is single-threaded per tensor)
    from archc.quant import quantized_matrix_bytes

    total = sum(math.prod(r.shape) * ctx.dtype.itemsize if r.quant is None else quantized_matrix_bytes(*r.shape, r.quant, ctx.dtype)
                for r in refs)
    with open(data_path, "wb") as fh, ThreadPoolExecutor(max_workers=ahead) as pool, \
            TensorProgress("writing weights", len(refs), total, enabled=progress) as bar:
        pending = [submit(r) for r in refs[:ahead]]
        for i, ref in enumerate(refs):
            t = joined(ref, pending.pop(0))
            if i + ahead < len(refs):
                pending.append(submit(refs[i + ahead]))
            if ref.quant is None:
                parts = [(ref.name, ctx.elem, list(ref.shape), tensor_bytes(t, ctx.dtype, ref.transpose))]
            else:  # one weight -> MatMulNBits' B, scales (and zero points), quantized here, tensor by tensor
                import numpy as np

                from exporters.quantize import expert_arrays, quantized_arrays

                arrays = (expert_arrays if ref.expert else quantized_arrays)(ref.name, t, ref.quant, ctx.dtype)
                parts = [(n, e, list(a.shape), memoryview(np.ascontiguousarray(a)).cast("B")) for n, e, a in arrays]
            del t
            for name, elem, dims, raw in parts:
                pad = (-offset) % ALIGN
                fh.write(b"\0" * pad)
                offset += pad
                fh.write(raw)
                proto = TensorProto(name=name, data_type=elem, dims=dims)
                proto.data_location = TensorProto.EXTERNAL
                for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(len(raw)))):
                    e = proto.external_data.add()
                    e.key, e.value = k, v
                protos.append(proto)
                offset += len(raw)
                bar.advance(len(raw))
            del parts
    return protos



# ------------------------------------------------------------------------------------------------
# Reading a compiled directory


def onnx_source(graph, model_dir: Path) -> Callable[[str], Any]:
    """The weights inside an `archc compile` directory: its initializers, mapped back to graph names by
    lowering the graph again with the options recorded in the model's metadata (which initializer holds
    which parameters, stacked and transposed how), then reading each one from model.onnx.data."""
    import numpy as np
    import onnx
    import torch

    from exporters.onnx_export import build_graph

    try:
        model = onnx.load(str(model_dir / MODEL_FILE), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's
        raise UserError(f"{model_dir / MODEL_FILE}: not a readable ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if META_QUANT in meta:  # the rounded weights are not the model's weights: read them from what was compiled
        raise UserError(f"{model_dir / MODEL_FILE}: its weights are quantized (--quant); export the unquantized "
                        f"compile, or the checkpoint it was compiled from")
    try:
        ctx = build_graph(graph, meta.get(META_TARGET, "portable"), meta.get(META_DTYPE, "fp32"),
                          logits=meta.get(META_LOGITS, "all"), next_token=meta.get(META_NEXT_TOKEN, "argmax"))
    except ValueError as e:
        raise UserError(f"{model_dir / MODEL_FILE}: metadata this archc cannot read ({e}); compile it again") from None
    refs = {r.name: r for r in ctx.weights}
    protos = {p.name: p for p in model.graph.initializer if p.name in refs}
    if set(protos) != set(refs):
        raise UserError(f"{model_dir / MODEL_FILE}: its initializers do not match its spec.yaml (missing "
                        f"{sorted(set(refs) - set(protos))[:3]}); compile it again with this archc")
    by_source: dict[str, str] = {}
    for name, ref in refs.items():
        for full in ref.source if isinstance(ref.source, tuple) else (ref.source,):
            by_source[full] = name
    try:
        data = np.memmap(model_dir / DATA_FILE, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir / DATA_FILE}: cannot read the weights ({e}); compile the directory again") from None
    np_dtype = {onnx.TensorProto.FLOAT: (np.float32, None), onnx.TensorProto.FLOAT16: (np.float16, None),
                onnx.TensorProto.BFLOAT16: (np.int16, torch.bfloat16)}
    shapes = {full: shape for full, shape, _ in graph.params()}
    cache: dict[str, Any] = {}

    def read(name: str):
        proto, ref = protos[name], refs[name]
        ext = {e.key: e.value for e in proto.external_data}
        off, length = int(ext["offset"]), int(ext["length"])
        if off + length > data.size or proto.data_type not in np_dtype:
            raise UserError(f"{model_dir / DATA_FILE}: {name} lies outside the file or has an unknown type; "
                            "the directory is damaged: compile it again")
        dt, view = np_dtype[proto.data_type]
        t = torch.from_numpy(np.array(data[off:off + length]).view(dt).reshape(list(proto.dims)))
        if view is not None:
            t = t.view(view)
        if ref.transpose:
            t = t.t()
        sources = ref.source if isinstance(ref.source, tuple) else (ref.source,)
        parts = t.split([shapes[s][0] for s in sources], dim=0) if len(sources) > 1 else (t,)
        return {s: p.contiguous() for s, p in zip(sources, parts, strict=True)}

    def get(full: str):
        if full not in cache:
            cache.update(read(by_source[full]))
        return cache.pop(full)  # each part is asked for once: memory stays near one initializer

    return get
