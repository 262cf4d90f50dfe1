"""Where archc's ORT decode step spends its time, on the GPU: one spec (default LLaMA-1.1B of the
standard set), cuda target, through archc's runner, traced with the PyTorch profiler (CUPTI sees
every kernel in the process, onnxruntime's included) plus onnxruntime's own per-node profile.

Per decode step it reports: wall time, GPU busy time (union of kernel intervals), the number of
kernels and memcpys, and the kernels that take the time (grouped by name), beside the roofline.
The gap between wall time and GPU busy time is host overhead (launches, onnxruntime's per-node
work, the sync that brings the logits to the host).

    python3 -m benchmarks.profile_ort --out DIR [--family llama] [--prompt 512] [--steps 32]

Writes DIR/profile_FAMILY[_GATE_UP][_QUANT[_head]].json (summary_name; an existing one: --force), so runs
that differ in the export's lowering or quantization keep their own files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import kernels_arg, outputs

ROOT = Path(__file__).resolve().parent.parent


def _step_class(steppers):
    for name in ("_BoundSteps", "_CudaSteps"):
        if hasattr(steppers, name):
            return getattr(steppers, name)
    raise RuntimeError("archc.runner.steppers has no IO-binding stepper class to trace")


def summary_name(family: str, gate_up: str | None, quant: str | None, quant_head: bool, kernels: str = "onnxruntime") -> str:
    """The summary's file name: every export choice of this script that changes the measured model is in it
    (as in the export folder's name), so a quantized and an unquantized run of one family do not share a file."""
    return (f"profile_{family}" + (f"_{gate_up}" if gate_up else "")
            + (f"_{quant}" + ("_head" if quant_head else "") if quant else "")
            + ("_archc" if kernels == "archc" else "") + ".json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of the summary JSON (made if absent)")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--work-dir", default="/tmp/archc-bench")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the plumbing (portable fp32, tiny --set)")
    ap.add_argument("--set", action="append", default=[], help="extra --set overrides (dry runs)")
    ap.add_argument("--ort-profile", action="store_true", help="also run onnxruntime's own profiler (host time per node)")
    ap.add_argument("--gate-up", choices=["one_gemm", "two_gemms"], help="the cuda lowering's GATE_UP for this export (A/B)")
    ap.add_argument("--quant", choices=["int4", "int8"], help="a weight-only quantized export (MatMulNBits, compile's defaults)")
    ap.add_argument("--quant-head", action="store_true", help="with --quant: quantize the output head too")
    kernels_arg.add_kernels(ap)
    outputs.add_force(ap)
    args = ap.parse_args()
    if args.quant_head and not args.quant:  # it would be ignored: the run would measure an unquantized export
        print(f"{ap.prog}: --quant-head quantizes the head of a --quant export; add --quant int4 or --quant int8", file=sys.stderr)
        return 2
    kernels_arg.refuse_archc_off_cuda(ap, args.kernels, args.device)
    summary_path = args.out / summary_name(args.family, args.gate_up, args.quant, args.quant_head, args.kernels)
    outputs.check_outputs(ap, args.force, ("--out", summary_path))

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import archc
    from benchmarks import standard
    from archc import runner
    from archc.runner import steppers
    from archc.bench.harness import measure_limits, roofline, Shape
    from exporters.onnx_export import export

    args.out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    if args.gate_up:
        from exporters import onnx_lowering_cuda

        onnx_lowering_cuda.GATE_UP = onnx_lowering_cuda.GateUp(args.gate_up)
    target = "cuda" if cuda else "portable"
    from archc.quant import QuantKind, QuantSettings

    quant = QuantSettings(QuantKind(args.quant), head=args.quant_head) if args.quant else None
    graph = archc.compile(standard.load_family(args.family, ROOT, extra=args.set))
    # The export folder is keyed as `archc bench` keys its own (archc.bench.workdir): the name ends in a fingerprint of
    # the resolved spec (so of every --set), the export options, the --set list as given and archc's code, and a
    # folder is reused only when its sealed key matches. It was named by spec name, target, dtype and options alone,
    # so a run with another --set (n_layers=1: the same name) silently measured the model an earlier run exported.
    from archc.bench.workdir import building, place, reusable, spec_parts
    from archc.errors import UserError

    parts = {**spec_parts(graph), "sets": list(args.set),
             "export": {"target": target, "dtype": args.dtype, "gate_up": args.gate_up, "quant": args.quant,
                        "quant_head": args.quant_head, "kernels": args.kernels}}
    stem = (f"{graph.spec.name}-{target}-{args.dtype}" + (f"-{args.gate_up}" if args.gate_up else "")
            + (f"-{args.quant}" + ("-head" if args.quant_head else "") if args.quant else "")
            + ("-archc" if args.kernels == "archc" else ""))
    model_dir = place(Path(args.work_dir), stem, parts)
    try:
        if not reusable(model_dir, parts):
            t = time.time()
            with building(model_dir, parts) as into:
                export(graph, into, target=target, dtype=args.dtype, quant=quant, kernels=args.kernels)
            print(f"exported {model_dir} in {time.time() - t:.1f} s")
    except UserError as e:  # a folder in the way under that name, an unwritable --work-dir: one line, exit 2
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    s = runner.Session(model_dir, device=args.device, io_binding=True, decode_window=1)  # one traced step per run (a window queues 16)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print("providers", s.sess.get_providers(), "kv_cache", s.kv_cache)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, graph.spec.vocab_size, (args.batch, args.prompt), generator=g).tolist()
    N = args.steps + 1

    # warm up, then time plain generate (no profiler) for the reference figure
    s.generate(prompts, max_new_tokens=8, greedy=True)
    sync()
    t0 = time.perf_counter()
    r = s.generate(prompts, max_new_tokens=N, greedy=True)
    plain = (time.perf_counter() - t0) * 1e3

    cls = _step_class(steppers)
    orig = cls.step
    counter = [0]

    def traced(self, *a, **kw):
        with record_function(f"archc_step_{counter[0]}"):
            counter[0] += 1
            return orig(self, *a, **kw)

    cls.step = traced
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            s.generate(prompts, max_new_tokens=N, greedy=True)
            sync()
    finally:
        cls.step = orig
    fd, name = tempfile.mkstemp(prefix=".trace-", suffix=".json", dir=args.out)  # not DIR/trace.json: that may be the user's
    os.close(fd)
    trace = Path(name)
    try:
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    finally:
        trace.unlink()  # large; the summary below is what comes back

    steps = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                    if e.get("cat") == "user_annotation" and e.get("name", "").startswith("archc_step_")),
                   key=lambda t: t[0])
    kernels = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "kernel"), key=lambda t: t[0])
    copies = [e for e in events if e.get("cat") in ("gpu_memcpy", "gpu_memset")]
    runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
    per_step = []
    by_name: dict[str, list[float]] = {}
    for k, (a, b, name) in enumerate(steps):
        ks = [(x, y, n) for x, y, n in kernels if a <= x <= b + 50]  # kernels of this step finish before its sync
        busy, end = 0.0, a
        for x, y, _ in ks:
            x = max(x, end)
            if y > x:
                busy += y - x
                end = y
        cp = [c for c in copies if a <= c["ts"] <= b]
        rt = [c for c in runtime if a <= c["ts"] <= b]
        per_step.append({"step": k, "wall_us": b - a, "gpu_busy_us": busy, "kernels": len(ks), "kernel_sum_us": sum(y - x for x, y, _ in ks),
                         "memcpy": len(cp), "memcpy_us": sum(c["dur"] for c in cp), "runtime_calls": len(rt),
                         "sync_us": sum(c["dur"] for c in rt if "Synchronize" in c["name"])})
        if k >= 1:  # decode steps only
            for x, y, n in ks:
                by_name.setdefault(n, []).append(y - x)
    decode = per_step[1:]
    n_dec = max(len(decode), 1)
    top = sorted(((sum(v) / n_dec, len(v) / n_dec, n) for n, v in by_name.items()), reverse=True)[:20]
    limits = measure_limits(args.device, dtypes=(args.dtype,))
    roof = roofline(graph, args.dtype, Shape(args.batch, args.prompt, N), limits)
    med = lambda key: statistics.median(d[key] for d in decode) if decode else None  # noqa: E731
    summary = {
        "spec": graph.spec.name, "sets": list(args.set), "model_dir": str(model_dir), "batch": args.batch, "prompt": args.prompt, "decode_steps": len(decode),
        "plain_generate_ms": plain, "plain_tpot_ms": (plain - r.prefill_ms) / (N - 1),
        "runner_prefill_ms": r.prefill_ms, "runner_decode_tok_s": r.decode_tokens_per_s,
        "roofline_tpot_ms": roof["decode_tpot_ms"],
        "decode_step_median": {k: med(k) for k in ("wall_us", "gpu_busy_us", "kernels", "kernel_sum_us", "memcpy", "memcpy_us",
                                                   "runtime_calls", "sync_us")},
        "prefill_step": per_step[0] if per_step else None,
        "top_kernels_per_decode_step": [{"us": round(us, 2), "count": round(c, 2), "kernel": n[:160]} for us, c, n in top],
        "lowering": s.lowering, "limits": limits,
    }
    if args.ort_profile:
        summary["ort_nodes"] = ort_node_profile(model_dir, prompts, N, args.device)
    summary_path.write_text(json.dumps(summary, indent=1))
    d = summary["decode_step_median"]
    if not d["wall_us"]:
        print("no decode steps traced")
        return 1
    print(f"{graph.spec.name} b{args.batch} p{args.prompt}: decode step wall {d['wall_us']:.0f} us, GPU busy {d['gpu_busy_us']:.0f} us "
          f"({100 * d['gpu_busy_us'] / d['wall_us']:.0f}%), {d['kernels']:.0f} kernels, {d['memcpy']:.0f} memcpy, "
          f"{d['runtime_calls']:.0f} CUDA runtime calls, sync {d['sync_us']:.0f} us; roofline {roof['decode_tpot_ms'] * 1e3:.0f} us; "
          f"plain generate TPOT {summary['plain_tpot_ms'] * 1e3:.0f} us")
    for t in summary["top_kernels_per_decode_step"]:
        print(f"  {t['us']:8.1f} us  x{t['count']:5.1f}  {t['kernel'][:110]}")
    if args.ort_profile:
        print("onnxruntime host time per decode step by operator (us):")
        for op, us in list(summary["ort_nodes"]["by_op_us_per_step"].items())[:15]:
            print(f"  {us:8.1f}  {op}")
    return 0


def ort_node_profile(model_dir: Path, prompts, N: int, device: str = "cuda") -> dict:
    """onnxruntime's own profiler: host-side time of each node (for CUDA nodes: the launch work)."""
    import onnxruntime as ort

    from archc import runner
    from archc.runner import providers as runner_providers  # open_session reads _session there

    orig = runner_providers._session

    def profiled(path, providers, quiet=True, ort_ops=None):
        so = ort.SessionOptions()
        if ort_ops is not None:  # a `--kernels archc` model: its op library (archc.runner.providers.ort_ops_library)
            so.register_custom_ops_library(str(ort_ops))
        so.enable_profiling = True
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), so, providers=providers)

    runner_providers._session = profiled
    try:
        s = runner.Session(model_dir, device=device, io_binding=True)
    finally:
        runner_providers._session = orig
    s.generate(prompts, max_new_tokens=N, greedy=True)
    prof = Path(s.sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op: dict[str, float] = {}
    providers: dict[str, int] = {}
    decode_runs = runs[1:] if len(runs) > 1 else runs
    lo = decode_runs[0]["ts"] if decode_runs else 0
    for e in nodes:
        if e["ts"] >= lo:
            op = e["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
        providers[e["args"].get("provider", "?")] = providers.get(e["args"].get("provider", "?"), 0) + 1
    n = max(len(decode_runs), 1)
    return {"model_run_us_median": statistics.median(e["dur"] for e in decode_runs) if decode_runs else None,
            "by_op_us_per_step": dict(sorted(((k, v / n) for k, v in by_op.items()), key=lambda kv: -kv[1])),
            "node_events_by_provider": providers}


if __name__ == "__main__":
    sys.exit(main())
