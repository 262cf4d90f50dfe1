"""sha256 of the exported ONNX files and the graph JSON for every library spec at a small size.

The byte-identity proof for refactors that must change no output (issue 10): the hashes of the
commit before the refactor are committed in tests/emit_onnx/export_hashes.json and
tests/emit_onnx/test_export_bytes.py recompiles and compares.

    python scripts/export_hashes.py                 # print the JSON
    python scripts/export_hashes.py --write FILE    # write it

Each case is a library spec shrunk by --set overrides (2 layers, d_model 64, 4 heads, vocab 128,
max_seq_len 64) plus, for axis values no library spec uses, a few variants. Every case is exported
for both targets and every dtype.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

SMALL = ["n_layers=2", "d_model=64", "attention.n_heads=4", "mlp.d_ff=128", "vocab_size=128", "max_seq_len=64"]

# per spec: what it needs beyond SMALL to validate at this size (explicit head_dim, kv_heads, tables)
SPEC_SETS = {
    "bloom": [],
    "falcon": [],
    "gemma": ["attention.head_dim=16"],
    "glm": ["position.max_positions=65"],
    "gpt-neox": [],
    "gpt1": ["position.max_positions=64"],
    "gpt2": ["position.max_positions=64"],
    "llama": [],
    "llama2-70b": ["attention.kv_heads=2"],
    "mistral": ["attention.kv_heads=2", "attention.sliding_window=16"],
    "palm": ["attention.head_dim=16"],
}

# axis values no library spec exercises: (label, base spec, extra sets, replaced sections)
VARIANTS = [
    ("llama+sinusoidal", "llama", [], {"position": {"kind": "sinusoidal"}}),
    ("llama+nope", "llama", [], {"position": {"kind": "none"}}),
    ("llama+interleaved", "llama", ["position.style=interleaved"], {}),
    ("llama+sandwich", "llama", ["norm.placement=sandwich"], {}),
    ("llama+post", "llama", ["norm.placement=post"], {}),
    ("llama+deepnorm", "llama", ["norm.placement=deepnorm", "init.scheme=deepnorm"], {}),
    ("llama+rmsbias", "llama", ["norm.bias=true"], {}),
    ("llama+embnorm", "llama", ["embedding.norm=rmsnorm"], {}),
    ("llama+headbias", "llama", ["embedding.head_bias=true", "embedding.head_vocab_size=96"], {}),
    ("llama+hd8", "llama", ["attention.n_heads=8"], {}),
    ("llama+relu", "llama", ["mlp.activation=relu", "mlp.bias=true"], {}),
    ("llama+silu", "llama", ["mlp.activation=silu"], {}),
    ("llama+geglu", "llama", ["mlp.activation=geglu", "mlp.bias=true"], {}),
    ("llama+reglu", "llama", ["mlp.activation=reglu"], {}),
    ("llama+parallel-separate", "llama", ["residual.layout=parallel", "residual.parallel_norms=separate"], {}),
    ("gpt2+offset", "gpt2", ["position.max_positions=66", "position.offset=2"], {}),
    ("gpt2+scale", "gpt2", ["embedding.multiplier=2.0", "norm.scale=one_plus_weight"], {}),
]

# (target, dtype, options): every dtype on both targets, plus the export options on one dtype
EXPORTS = [(t, d, {}) for t in ("portable", "cuda") for d in ("fp32", "fp16", "bf16")]
EXPORTS += [("cuda", "fp16", {"logits": "last"}), ("portable", "fp32", {"next_token": "none", "logits": "last"}),
            ("cuda", "fp32", {"fused_fp32": True})]


def cases() -> list[tuple[str, str, list[str], dict]]:
    out = [(name, name, SMALL + sets, {}) for name, sets in SPEC_SETS.items()]
    out += [(label, base, SMALL + SPEC_SETS[base] + sets, repl) for label, base, sets, repl in VARIANTS]
    return out


def load(base: str, sets: list[str], replace: dict):
    from archc.loader import library_spec, load_data, spec_from_dict

    data, _ = load_data(library_spec(base))
    data = dict(data, **replace)
    return spec_from_dict(data, sets, source=base)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def case_hashes(base: str, sets: list[str], replace: dict, exports=EXPORTS) -> dict:
    from archc.graph import compile as compile_graph
    from exporters.onnx_export import export

    graph = compile_graph(load(base, sets, replace))
    out = {"graph.json": hashlib.sha256(graph.to_json().encode()).hexdigest()}
    with tempfile.TemporaryDirectory() as tmp:
        for target, dtype, opts in exports:
            key = "/".join([target, dtype] + [f"{k}={v}" for k, v in sorted(opts.items())])
            d = Path(tmp) / key.replace("/", "_")
            export(graph, d, target=target, dtype=dtype, spec_yaml="", **opts)
            out[key] = {f: _sha(d / f) for f in ("model.onnx", "model.onnx.data", "genai_config.json")}
    return out


def all_hashes() -> dict:
    return {label: case_hashes(base, sets, repl) for label, base, sets, repl in cases()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path, help="write the JSON here instead of printing it")
    args = ap.parse_args(argv)
    text = json.dumps(all_hashes(), indent=1, sort_keys=True) + "\n"
    if args.write:
        args.write.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
