"""Run the standard set of issue 6 in one go, in priority order, on one GPU.

    PYTHONPATH=$PWD python3 benchmarks/run_standard.py --out results.json [--tier 1,2,3,4] [--budget-s 540]

Tiers (what the issue's targets need first):
  1  LLaMA-1.1B, batch 1, prompts 512 and 2048, fp16, every backend (and ort without CUDA graphs)
  2  every family, batch 1, prompt 512 and 2048, fp16: ort + HF eager and sdpa where a transformers
     class computes the family (else archc's torch module as the alternative); torch.compile
     configurations only in tier 1 (each costs a compile of a minute or more)
  3  every family, batch 16, prompt 512 and 2048, fp16, ort + hf-sdpa / torch
  4  every family, batch 1, prompt 512, bf16, ort + hf-sdpa / torch
The limits (copy bandwidth, GEMM rate) are measured once, at the start, in the same process.
Cases are skipped, never cut, when the time budget would be passed; the JSON is rewritten after
every case, so a run stopped at any point keeps what it measured. The figures go into RESULTS.md
through benchmarks/render_results.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import standard  # noqa: E402

HF_FAMILIES = {"llama", "gpt2", "bloom"}


def cases(tiers: list[int]) -> list[dict]:
    out = []
    if 1 in tiers:
        for p in (512, 2048):
            out.append(dict(tier=1, family="llama", dtype="fp16", batch=1, prompt=p,
                            backends=["ort", "ort-nograph", "torch", "torch-compile", "hf-eager", "hf-sdpa", "hf-compile"]))
    fams = list(standard.FAMILIES)
    if 2 in tiers:
        for p in (512, 2048):
            for f in fams:
                if f == "llama":
                    continue
                be = ["ort", "hf-eager", "hf-sdpa"] if f in HF_FAMILIES else ["ort", "torch"]
                out.append(dict(tier=2, family=f, dtype="fp16", batch=1, prompt=p, backends=be))
    if 3 in tiers:
        for p in (512, 2048):
            for f in fams:
                out.append(dict(tier=3, family=f, dtype="fp16", batch=16, prompt=p,
                                backends=["ort", "hf-sdpa" if f in HF_FAMILIES else "torch"]))
    if 4 in tiers:
        for f in fams:
            out.append(dict(tier=4, family=f, dtype="bf16", batch=1, prompt=512,
                            backends=["ort", "hf-sdpa" if f in HF_FAMILIES else "torch"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file (rewritten after every case)")
    ap.add_argument("--tier", default="1,2,3,4")
    ap.add_argument("--families", default=",".join(standard.FAMILIES))
    ap.add_argument("--backends", default=None, help="restrict every case to these backends")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=540, help="start no case after this many seconds")
    ap.add_argument("--work-dir", default="/tmp/archc-bench", help="ONNX exports (kept for later calls)")
    ap.add_argument("--prompts", default="512,2048", help="restrict to these prompt lengths")
    ap.add_argument("--batches", default="1,16", help="restrict to these batch sizes")
    ap.add_argument("--skip", default="", help="comma list of family:dtype:batch:prompt already measured")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    import archc
    from archc.bench import Bench, Shape, environment, measure_limits, parse_backends, render
    from archc.commands.bench_cmds import write_json_atomic

    t0 = time.time()
    console = Console(width=150)
    todo = [c for c in cases([int(t) for t in args.tier.split(",")]) if c["family"] in args.families.split(",")]
    todo = [c for c in todo if str(c["prompt"]) in args.prompts.split(",") and str(c["batch"]) in args.batches.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    todo = [c for c in todo if f"{c['family']}:{c['dtype']}:{c['batch']}:{c['prompt']}" not in skip]
    dtypes = sorted({c["dtype"] for c in todo}) or ["fp16"]
    limits = measure_limits("cuda", dtypes=tuple(dict.fromkeys(["fp16", "bf16"] + dtypes)))
    report = {"environment": environment(), "limits": limits, "runs": [], "skipped": []}
    console.print(f"limits: copy {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                  + ", ".join(f"GEMM {k} {v / 1e12:.0f} TFLOP/s" for k, v in limits["gemm_flops_per_s"].items()))

    # Group by (family, dtype) so each model is built and exported once; keep the priority order of groups.
    groups: dict[tuple, list] = {}
    for c in todo:
        groups.setdefault((c["family"], c["dtype"]), []).append(c)
    for (family, dtype), cs in groups.items():
        names = list(dict.fromkeys(n for c in cs for n in c["backends"]))
        if args.backends:
            names = [n for n in names if n in parse_backends(args.backends)]
        graph = archc.compile(standard.load_family(family, ROOT))
        bench = Bench(graph, dtype=dtype, device="cuda", backends=names, repeats=args.repeats, work_dir=args.work_dir,
                      limits=limits, log=lambda m: console.print(f"[dim]{m}[/]"))
        try:
            for c in cs:
                elapsed = time.time() - t0
                if elapsed > args.budget_s:
                    report["skipped"].append(c)
                    console.print(f"[yellow]skipped (budget): {c}[/]")
                    continue
                bench.backend_names = [n for n in c["backends"] if n in names]
                console.print(f"[bold]{family} {dtype} batch {c['batch']} prompt {c['prompt']}[/] ({elapsed:.0f} s in)")
                run = bench.run(Shape(c["batch"], c["prompt"], args.new_tokens))
                run.update(family=family, tier=c["tier"])
                report["runs"].append(run)
                render(run, limits, console)
                write_json_atomic(args.out, report)
        finally:
            bench.close()
            del bench
            gc.collect()
            torch.cuda.empty_cache()
    write_json_atomic(args.out, report)
    console.print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
