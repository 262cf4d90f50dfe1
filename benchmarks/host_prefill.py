"""The runner's host work around one prefill, in one process on one card (GPU; `--device cpu` dry run).

    PYTHONPATH=/tmp/site:$PWD python3 -m benchmarks.host_prefill --out DIR

On archc's TinyLlama-shaped cuda export (benchmarks/prefill_vs_genai.py's shape) it times, per
(batch, prompt), `Session.generate(prompts, 1)` (the bench's prefill figure, T(1)) in alternation:
- `kept`: as the runner does it, the stepper's prefill binding reused (cache buffers bound once);
- `rebound`: the stepper's binding dropped before each call, so the 2 x n_layers cache buffers are
  bound again, as before the binding was kept;
and the pure-Python pieces of generate with no model run: `check_prompts` (and its Python loop from
before the numpy check, `check_loop_before`) and `feeds.left_pad`.
Medians over --runs; writes DIR/host_prefill.json (an existing one: --force).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import outputs

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of host_prefill.json (made if absent)")
    ap.add_argument("--work", default="/tmp/archc-host-prefill")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="1x512,1x2048,16x512")
    ap.add_argument("--set", action="append", default=[], help="extra --set overrides (dry runs)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out / "host_prefill.json"))

    import archc
    from archc import feeds
    from archc.loader import load_spec
    from archc.model_dir import MODEL_FILE
    from archc.runner import Session
    from benchmarks.prefill_vs_genai import ARCHC_SET
    from exporters.onnx_export import export

    graph = archc.compile(load_spec(ROOT / "specs" / "llama.yaml", ARCHC_SET + args.set))
    d = Path(args.work) / "llama"
    if not (d / MODEL_FILE).exists():
        export(graph, d, target="cuda", dtype="fp16" if args.device == "cuda" else "fp32", fused_fp32=args.device != "cuda")
    s = Session(d, device=args.device, io_binding=None if args.device == "cuda" else "static")
    out: dict = {"cuda_graph": s.cuda_graph, "shapes": {}}
    for shape in args.shapes.split(","):
        B, L = (int(x) for x in shape.split("x"))
        prompts = np.random.default_rng(L).integers(3, graph.spec.vocab_size - 1, (B, L)).tolist()
        st = s._static_stepper(B, L + 1) if s.cuda_graph or s.io_binding == "static" else None
        times: dict = {"kept": [], "rebound": []}
        for i in range(args.runs + 3):
            for mode in ("kept", "rebound"):
                if mode == "rebound" and st is not None:
                    st.prefill_io = None
                t0 = time.perf_counter()
                s.generate(prompts, 1)
                if i >= 3:
                    times[mode].append((time.perf_counter() - t0) * 1e3)
        py = {"check_prompts": [], "left_pad": [], "check_loop_before": []}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            s.check_prompts(prompts, 1)
            t1 = time.perf_counter()
            feeds.left_pad(prompts)
            t2 = time.perf_counter()
            for p in prompts:  # check_prompts before numpy: a Python loop over every id
                [t for t in p if not 0 <= int(t) < s.vocab]
            t3 = time.perf_counter()
            py["check_prompts"].append((t1 - t0) * 1e3)
            py["left_pad"].append((t2 - t1) * 1e3)
            py["check_loop_before"].append((t3 - t2) * 1e3)
        out["shapes"][shape] = {k: statistics.median(v) for k, v in (times | py).items()}
        print(shape, json.dumps(out["shapes"][shape]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host_prefill.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
