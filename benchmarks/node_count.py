"""ONNX nodes per decoder layer of the cuda target (issue 6), no GPU needed.

Without CUDA graphs a decode step is host-bound: onnxruntime spends about 7 us of host time per
node (benchmarks/RESULTS.md, BLOOM on an H200), so the node count of one layer times the layer count
is the floor of a decode step's host time. This script exports each family of the standard set
(benchmarks/standard.py) at a small size (d_model 256, 2 layers; the layer structure does not depend
on the size) and prints, per op type, the nodes of one layer:
- `export`: the graph archc writes (nodes scoped to layers.1, i.e. a middle layer: layer 0 may carry
  shared side inputs such as the mask, the last layer feeds the final norm);
- `ort-cpu`: onnxruntime's optimized graph on the CPU provider (SessionOptions.optimized_model_filepath):
  the nodes of a 2-layer export minus those of a 1-layer export. It is exported in fp32 with the
  tests' `fused_fp32` switch, which gives the same graph structure as an fp16 cuda export (the fused
  ops keep their fp32 CPU kernels, no fp16 fallbacks). onnxruntime's CPU fusions differ from its CUDA
  ones, so this is indicative only.

    python3 -m benchmarks.node_count                 # fp16, the five families
    python3 -m benchmarks.node_count --dtype fp32 --families bloom glm
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["d_model=256", "attention.n_heads=4", "mlp.d_ff=1024", "vocab_size=512", "max_seq_len=128"]


def small_spec(family: str, layers: int):
    from benchmarks.standard import FAMILIES
    from archc.loader import load_spec

    path, sets = FAMILIES[family]
    keep = [s for s in sets if not s.startswith(("d_model=", "attention.n_heads=", "mlp.d_ff=", "max_seq_len=", "n_layers=",
                                                  "attention.kv_heads=", "attention.head_dim=", "position.max_positions="))]
    extra = []
    if family == "llama":
        extra.append("attention.kv_heads=2")
    if family in ("gpt2", "glm"):
        extra.append("position.max_positions=128")
    return load_spec(ROOT / path, keep + SMALL + extra + [f"n_layers={layers}"])


def exported_layer_ops(family: str, dtype: str) -> collections.Counter:
    """Op types of the nodes archc emits inside layer 1 (node names are scoped by graph node)."""
    import archc
    from exporters.onnx_export import build_graph

    ctx = build_graph(archc.compile(small_spec(family, 3)), "cuda", dtype)
    return collections.Counter(n.op_type for n in ctx.nodes if n.name.startswith("layers.1."))


def ort_cpu_nodes(family: str, layers: int, tmp: Path) -> collections.Counter:
    import archc
    import onnx
    import onnxruntime as ort

    from archc.model_dir import MODEL_FILE
    from exporters.onnx_export import export

    d = tmp / f"{family}-{layers}"
    export(archc.compile(small_spec(family, layers)), d, target="cuda", dtype="fp32", fused_fp32=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(d / "optimized.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(d / MODEL_FILE), so, providers=["CPUExecutionProvider"])
    m = onnx.load(str(d / "optimized.onnx"), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


def fmt(c: collections.Counter) -> str:
    return f"{sum(c.values()):3d}  " + ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--families", nargs="*", default=["llama", "palm", "bloom", "gpt2", "glm"])
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime's optimized graph")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        for fam in args.families:
            print(f"{fam} ({args.dtype}, cuda target)")
            print(f"  export  per layer: {fmt(exported_layer_ops(fam, args.dtype))}")
            if args.no_ort:
                continue
            try:
                two, one = ort_cpu_nodes(fam, 2, Path(t)), ort_cpu_nodes(fam, 1, Path(t))
            except Exception as e:  # noqa: BLE001 - e.g. an op without a CPU kernel in this dtype
                print(f"  ort-cpu per layer: n/a ({str(e).splitlines()[0][:140]})")
                continue
            print(f"  ort-cpu per layer: {fmt(two - one)}")


if __name__ == "__main__":
    main()
