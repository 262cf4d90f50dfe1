"""int4 model size and export time: archc `compile --quant int4` against onnxruntime-genai's builder
(`-p int4`), on one TinyLlama-shaped Hugging Face checkpoint (CPU; issue 14 "int4 model size within 5%
of genai's int4 export").

    python -m benchmarks.quant_size OUT_JSON --genai-python PY [--layers 22] [--skip-genai] [--archc VARIANT ...]
    python -m benchmarks.quant_size OUT_JSON --quantize-only      # rtn vs search, the quantizer alone

PY is a python that imports onnxruntime_genai 0.18 plus torch, transformers and onnx_ir (the builder
needs all four), e.g. a venv made with `--system-site-packages` on top of this environment with
`pip install onnxruntime-genai==0.18.0 onnx-ir` (its CPU onnxruntime then shadows onnxruntime-gpu in
that venv only). The checkpoint: transformers' LlamaForCausalLM at TinyLlama-1.1B's shape (22 layers,
d_model 2048, 32 heads, 4 kv heads, d_ff 5632, vocab 32000), random weights (seed 0), fp16 safetensors,
plus a word-level tokenizer.json of 32000 tokens made with `tokenizers` (the builder reads one).
Both exporters target cuda in fp16 (the issue's int4 row). Sizes are the bytes of every file the
exporter wrote that holds the model (*.onnx, *.onnx.data); the builder's defaults (block 32,
symmetric, every MatMul quantized including lm_head, embedding Gather dense) are read off its source:
onnxruntime_genai/models/quantization/quant_config.py and builders/base.py (`to_nbits`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import outputs

SHAPE = dict(num_hidden_layers=22, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
             intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def make_checkpoint(d: Path, layers: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers})
    model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(d, safe_serialization=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, cfg.vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(d)


def model_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.name.endswith((".onnx", ".onnx.data")))


def by_role(d: Path) -> dict[str, int]:
    """Initializer bytes of the exported model, grouped by the op that consumes them (onnx, external data
    left on disk: sizes from dims and element type)."""
    import numpy as np
    import onnx
    from onnx import helper

    m = onnx.load(str(next(p for p in d.iterdir() if p.suffix == ".onnx")), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    out: dict[str, int] = {}
    for node in m.graph.node:
        for name in node.input:
            t = inits.pop(name, None)
            if t is None:
                continue
            n = int(np.prod(t.dims)) if t.dims else 1
            size = n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type not in (22, 21) else (n + 1) // 2
            key = f"{node.op_type}" + (f":{name.rsplit('.', 1)[-1]}" if node.op_type.endswith("NBits") else "")  # MatMulNBits, archc's *NBits
            out[key] = out.get(key, 0) + size
    return dict(sorted(out.items()))


def quantize_seconds(layers: int) -> dict:
    """In-process time of exporters.quantize.quantize alone (no reading, no writing) on one layer's
    projection shapes (q|k|v, o, gate|up, down as the cuda target stacks them) and the head, random
    N(0, 0.02) weights, int4 symmetric b32 fp16, per method; `total_s` scales the layer by `layers`."""
    import numpy as np

    from archc.dtypes import DType
    from archc.quant import QuantKind, QuantMethod, QuantSettings
    from exporters.quantize import quantize

    d, kv, f, v = SHAPE["hidden_size"], SHAPE["hidden_size"] // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"], \
        SHAPE["intermediate_size"], SHAPE["vocab_size"]
    rng = np.random.default_rng(0)
    layer = [(rng.standard_normal((n, k)) * 0.02).astype(np.float32) for n, k in ((d + 2 * kv, d), (d, d), (2 * f, d), (d, f))]
    head = (rng.standard_normal((v, d)) * 0.02).astype(np.float32)
    out = {}
    for method in QuantMethod:
        q = QuantSettings(QuantKind.int4, method=method)
        t0 = time.perf_counter()
        for w in layer:
            quantize(w, q, DType.float16)
        t_layer = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize(head, q, DType.float16)
        t_head = time.perf_counter() - t0
        out[method.value] = {"layer_s": round(t_layer, 2), "head_s": round(t_head, 2), "total_s": round(t_layer * layers + t_head, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_json", type=Path, metavar="OUT_JSON", help="JSON file (an existing one: --force)")
    ap.add_argument("--genai-python", default=None)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--skip-genai", action="store_true")
    ap.add_argument("--archc", nargs="*", default=None, help="archc compile variants to run (names of VARIANTS)")
    ap.add_argument("--quantize-only", action="store_true", help="time exporters.quantize.quantize alone (rtn vs search)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("OUT_JSON", args.out_json))
    if args.quantize_only:
        result = {"layers": args.layers, "machine": os.uname().nodename, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                  "quantize": quantize_seconds(args.layers), "load_after": os.getloadavg()}
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    variants = {
        "fp16": [],
        "int4": ["--quant", "int4"],
        "int4+head": ["--quant", "int4", "--quant-head"],
        "int4+head search": ["--quant", "int4", "--quant-head", "--quant-method", "search"],
        "int4 search": ["--quant", "int4", "--quant-method", "search"],
    }
    chosen = args.archc if args.archc is not None else list(variants)
    result: dict = {"layers": args.layers, "machine": os.uname().nodename, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                    "archc": {}, "genai": None}
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="quant-size-") as tmp:
        ckpt = Path(tmp) / "ckpt"
        t0 = time.perf_counter()
        make_checkpoint(ckpt, args.layers)
        result["checkpoint_s"] = round(time.perf_counter() - t0, 1)
        if not args.skip_genai:
            out = Path(tmp) / "genai-int4"
            cmd = [args.genai_python, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out),
                   "-p", "int4", "-e", "cuda", "-c", str(Path(tmp) / "cache")]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"genai builder failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            result["genai"] = {"bytes": model_bytes(out), "export_s": round(secs, 1), "by_op": by_role(out)}
            print("genai", result["genai"], flush=True)
        for name in chosen:
            out = Path(tmp) / f"archc-{name.replace(' ', '-').replace('+', 'p')}"
            cmd = [sys.executable, "-m", "archc.cli", "compile", str(ckpt), "-o", str(out), "--target", "cuda", "--dtype", "fp16",
                   *variants[name]]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"archc compile {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            result["archc"][name] = {"bytes": model_bytes(out), "export_s": round(secs, 1), "by_op": by_role(out)}
            print(name, result["archc"][name], flush=True)
            import shutil

            shutil.rmtree(out)
    result["load_after"] = os.getloadavg()
    g = (result["genai"] or {}).get("bytes")
    if g:
        for v in result["archc"].values():
            v["vs_genai"] = round(v["bytes"] / g, 4)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
