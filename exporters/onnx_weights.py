"""Reading the weights back out of an `archc compile` directory (`archc export-hf DIR`): the inverse
of the exporter's weight streaming. It lives beside the exporter because it must lower the graph
again to know which initializer holds which parameters; archc/ itself does not import exporters/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from archc.errors import UserError
from archc.model_dir import DATA_FILE, META_DTYPE, META_LOGITS, META_NEXT_TOKEN, META_QUANT, META_TARGET, MODEL_FILE


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
    data = np.memmap(model_dir / DATA_FILE, dtype=np.uint8, mode="r")
    np_dtype = {onnx.TensorProto.FLOAT: (np.float32, None), onnx.TensorProto.FLOAT16: (np.float16, None),
                onnx.TensorProto.BFLOAT16: (np.int16, torch.bfloat16)}
    shapes = {full: shape for full, shape, _ in graph.params()}
    cache: dict[str, Any] = {}

    def read(name: str):
        proto, ref = protos[name], refs[name]
        ext = {e.key: e.value for e in proto.external_data}
        off, length = int(ext["offset"]), int(ext["length"])
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
