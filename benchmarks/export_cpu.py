"""CPU export benchmark (issue 6): `archc compile` of a standard-set shape (default LLaMA-1.1B, fp16,
seeded weights) against `torch.onnx.export(dynamo=True)` of archc's own PyTorch module for the same
spec. Each export runs in a fresh process; the figures are its wall time and its peak resident
memory (getrusage ru_maxrss of that process, interpreter and imports included), beside the size of
the weights in that dtype.

The two exports are not the same work: archc writes one model that serves prefill and cached
decode (past_key_values inputs, present outputs) straight from the component graph; the dynamo
export here traces the module's prefill call (input_ids, attention_mask -> logits, present), the
simplest graph it can be asked for, so the comparison is, if anything, generous to dynamo. The dynamo
call keeps torch's defaults (optimize=True, the onnxscript optimizer); ARCHC_DYNAMO_OPTIMIZE=0 skips it.

    python3 -m benchmarks.export_cpu [--family llama] [--set n_layers=4 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import outputs

ROOT = Path(__file__).resolve().parent.parent


def _graph(family: str, extra: list[str]):
    import archc
    from benchmarks import standard

    return archc.compile(standard.load_family(family, ROOT, extra=extra))


def child(which: str, family: str, extra: list[str], out_dir: Path) -> dict:
    """Runs inside the fresh process: one export, timed from before the heavy imports."""
    t0 = time.perf_counter()
    graph = _graph(family, extra)
    if which == "archc":
        from exporters.onnx_export import export

        export(graph, out_dir / "archc", target="cuda", dtype="fp16")
        files = list((out_dir / "archc").iterdir())
    else:
        import torch

        from exporters.torch_module import build_module

        model = build_module(graph, dtype=torch.float16)
        ids = torch.randint(1, graph.spec.vocab_size, (1, 16))
        mask = torch.ones_like(ids)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        torch.onnx.export(model, (ids, mask), str(out_dir / "dynamo.onnx"), dynamo=True, external_data=True,
                          input_names=["input_ids", "attention_mask"],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                          optimize=os.environ.get("ARCHC_DYNAMO_OPTIMIZE", "1") == "1")  # torch's default: optimize=True
        files = [p for p in out_dir.iterdir() if p.name.startswith("dynamo")]
    wall = time.perf_counter() - t0
    return {"which": which, "wall_s": wall, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "output_bytes": sum(f.stat().st_size for f in files if f.is_file())}


def run_one(which: str, family: str, extra: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"archc-export-{which}-") as d:
        cmd = [sys.executable, "-m", "benchmarks.export_cpu", "--child", which, "--family", family, "--out-dir", d] + [a for s in extra for a in ("--set", s)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
        except subprocess.TimeoutExpired:
            return {"which": which, "error": f"did not finish within {timeout:.0f} s"}
        if p.returncode != 0:
            return {"which": which, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300], "rc": p.returncode}
        return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="llama")
    ap.add_argument("--set", action="append", default=[], help="extra overrides, e.g. n_layers=4 for a smaller run")
    ap.add_argument("--which", default="archc,dynamo")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, help="JSON report, rewritten after each export (an existing one: --force)")
    outputs.add_force(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.family, args.set, args.out_dir)))
        return 0
    outputs.check_outputs(ap, args.force, ("--json", args.json), make_folder=False)

    import archc.cost

    graph = _graph(args.family, args.set)
    params = archc.cost.cost(graph).params
    weights = params * 2
    report = {"spec": graph.spec.name, "sets": args.set, "params": params, "weights_fp16_bytes": weights,
              "cpu_count": os.cpu_count(), "results": {}}
    for which in args.which.split(","):
        r = run_one(which, args.family, args.set, args.timeout)
        report["results"][which] = r
        if "error" in r:
            print(f"{which:7s} error: {r['error']}")
        else:
            print(f"{which:7s} {r['wall_s']:8.1f} s   peak RSS {r['peak_rss_bytes'] / 2**30:6.2f} GiB "
                  f"({r['peak_rss_bytes'] / weights:.2f}x the fp16 weights, {weights / 2**30:.2f} GiB)   output {r['output_bytes'] / 2**30:.2f} GiB")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    a, d = report["results"].get("archc", {}), report["results"].get("dynamo", {})
    if "wall_s" in a and "wall_s" in d:
        report["speedup"] = d["wall_s"] / a["wall_s"]
        print(f"archc compile is {report['speedup']:.1f}x faster than torch.onnx.export(dynamo=True)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
