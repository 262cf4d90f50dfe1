"""Where the host's time goes in one CUDA-graph decode step of archc's runner (the gap between a step's
wall time and its GPU time in benchmarks/profile_ort.py).

    python3 -m benchmarks.host_step --family llama --out out/host_step.json

One generate call builds the runner's fixed-buffer stepper and captures the decode step. Then the
step's pieces are repeated on those very buffers and timed with the host clock, each piece separately:
- feeds: the numpy work the runner does per token (the full-width mask, positions, written into the
  stepper's packed host array);
- h2d: the `update_inplace` copy of that array into the bound device buffer (one copy for every feed;
  three copies, one per feed, before the packed buffer);
- run: `run_with_iobinding` (onnxruntime's Run around the graph replay, which ends in a stream
  synchronize, so it includes the GPU time of the step);
- read: bringing next_token (B int64) to the host.
and `run` alone with the CUDA graph replayed back to back, whose minimum is closest to the GPU's own
step time. Medians over --steps repetitions. (The repeated step writes the same cache slot each time;
only the timing is of interest here.)
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
    ap.add_argument("--family", default="llama")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work-dir", default="/tmp/archc-host-step")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the plumbing (io_binding='static', no graph)")
    ap.add_argument("--set", action="append", default=[], help="extra --set overrides (dry runs)")
    ap.add_argument("--out", type=Path, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out))

    from benchmarks import standard

    import archc
    from archc.model_dir import MODEL_FILE
    from archc.runner import Session
    from exporters.onnx_export import export

    graph = archc.compile(standard.load_family(args.family, ROOT, extra=args.set))
    d = Path(args.work_dir) / f"{graph.spec.name}-{args.dtype}"
    if not (d / MODEL_FILE).exists():
        export(graph, d, target="cuda", dtype=args.dtype, fused_fp32=args.dtype == "fp32")
    s = Session(d, device=args.device, io_binding=None if args.device == "cuda" else "static")
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, graph.spec.vocab_size, (args.batch, args.prompt)).tolist()
    N = 16
    s.generate(prompts, N)
    (st,) = [v for k, v in s._steppers.items() if k == (args.batch, args.prompt + N)]
    fixed = st.fixed
    B, T = args.batch, args.prompt + 1
    mask = np.ones((B, T), np.int64)
    tok = np.zeros((B, 1), np.int64)
    lens = np.full(B, args.prompt, np.int64)

    def feeds():
        fixed.view("input_ids")[...] = tok
        m = fixed.view("attention_mask")
        m[:, :T] = mask
        m[:, T:] = 0
        if s.has_positions:
            fixed.view("position_ids")[...] = s._positions(mask, 1, lens, 1)

    parts = {"feeds": [], "h2d": [], "run": [], "read": [], "step": []}
    for i in range(args.steps + 20):
        t0 = time.perf_counter()
        feeds()
        t1 = time.perf_counter()
        fixed.feeds.dev.update_inplace(fixed.feeds.host)
        t2 = time.perf_counter()
        s.sess.run_with_iobinding(fixed.io, fixed.opts)
        t3 = time.perf_counter()
        nt = fixed.next_token.numpy() if fixed.next_token is not None else fixed.logits.numpy()
        t4 = time.perf_counter()
        if i >= 20:
            for k, a, b in (("feeds", t0, t1), ("h2d", t1, t2), ("run", t2, t3), ("read", t3, t4), ("step", t0, t4)):
                parts[k].append((b - a) * 1e6)
    back_to_back = []
    for i in range(args.steps + 20):
        t0 = time.perf_counter()
        s.sess.run_with_iobinding(fixed.io, fixed.opts)
        if i >= 20:
            back_to_back.append((time.perf_counter() - t0) * 1e6)
    res = {"family": args.family, "dtype": args.dtype, "batch": B, "prompt": args.prompt, "cuda_graph": s.cuda_graph,
           "median_us": {k: statistics.median(v) for k, v in parts.items()},
           "run_back_to_back_us": {"median": statistics.median(back_to_back), "min": min(back_to_back)}, "token": int(nt.ravel()[0])}
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
