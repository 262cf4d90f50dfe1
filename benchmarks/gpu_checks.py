"""Issue 4's GPU proof, one script: for LLaMA, PaLM, BLOOM, GLM and GPT-2 shapes (small, GPU-friendly
head_dim 64), compile the `cuda` target in fp16 and check on CUDAExecutionProvider:

1. placement: every node's provider, from onnxruntime's own profiler (each node event names its
   execution provider) and from its verbose "Node placements" log; compute operators must all be on
   CUDA (onnxruntime deliberately keeps small int64 shape arithmetic on the CPU);
2. fp16 logits within 2e-2 relative (||ort - torch|| / ||torch|| over real positions) of archc's
   PyTorch module in fp32, on a left-padded batch, for the prefill and three cached decode steps;
3. `archc run --device cuda` end to end (the CLI in a subprocess), its ids compared with greedy
   decoding of the fp32 PyTorch module.

    python3 -m benchmarks.gpu_checks --out DIR   (writes gpu_checks.json, gpu_checks.log; existing ones: --force)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import kernels_arg, outputs

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["d_model=256", "n_layers=2", "attention.n_heads=4", "mlp.d_ff=688", "vocab_size=1000", "max_seq_len=128"]
FAMILIES = {
    "llama": ("specs/llama.yaml", SMALL + ["attention.kv_heads=2", "attention.sharing=gqa"]),
    "palm": ("specs/palm.yaml", SMALL + ["attention.head_dim=64"]),
    "bloom": ("specs/bloom.yaml", SMALL),
    "glm": ("specs/glm.yaml", SMALL + ["position.max_positions=128"]),
    "gpt2": ("specs/gpt2.yaml", SMALL + ["position.max_positions=128"]),
}
# Operators that do the model's arithmetic; any of these on the CPU fails the placement check.
COMPUTE = {"MatMul", "Gemm", "GroupQueryAttention", "Attention", "MultiHeadAttention", "Softmax", "LayerNormalization",
           "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization",
           "RotaryEmbedding", "Gelu", "FastGelu", "BiasGelu", "Sigmoid", "Tanh", "Erf", "Relu", "Div", "Pow", "Sqrt",
           "ReduceMean", "Einsum", "MatMulNBits", "QuickGelu", "BiasAdd", "Where", "CumSum",
           "GatedMLP", "GatedMLPNBits", "Linear", "LinearNBits"}  # the last four: archc's ops (--kernels archc)
WEIGHT_GATHERS = ("embed/", "pos_embed/")  # Gathers of these read weight tables: compute, not shape arithmetic


def _fd_capture(path: Path):
    """Redirect fd 2 (onnxruntime's C++ logger writes there) into `path`; returns a restore callable."""
    sys.stderr.flush()
    saved = os.dup(2)
    f = open(path, "ab")
    os.dup2(f.fileno(), 2)

    def restore():
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        f.close()

    return restore


def placement(model_dir: Path, run_once, log_path: Path, device: str = "cuda") -> dict:
    """Open the model with profiling + verbose logging, run it, read every node's provider."""
    import onnxruntime as ort

    from archc import runner
    from archc.runner import providers as runner_providers  # open_session reads _session there

    orig = runner_providers._session

    def profiled(path, providers, quiet=True, ort_ops=None):
        so = ort.SessionOptions()
        if ort_ops is not None:  # a `--kernels archc` model: its op library (archc.runner.providers.ort_ops_library)
            so.register_custom_ops_library(str(ort_ops))
        so.enable_profiling = True
        so.profile_file_prefix = str(log_path.parent / f"ort_profile_{model_dir.name}")
        so.log_severity_level = 0
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(optimized)  # after placement: shows any Memcpy nodes onnxruntime inserted
        return ort.InferenceSession(str(path), so, providers=providers)

    optimized = log_path.parent / f".optimized_{model_dir.name}.onnx"
    verbose = log_path.parent / f".verbose_{model_dir.name}.log"
    ort.set_default_logger_severity(0)
    restore = _fd_capture(verbose)
    try:
        runner_providers._session = profiled
        s = runner.Session(model_dir, device=device)
    finally:
        runner_providers._session = orig
        restore()
        ort.set_default_logger_severity(3)
    run_once(s)
    restore = _fd_capture(verbose)
    try:
        prof = Path(s.sess.end_profiling())
    finally:
        restore()
    events = json.loads(prof.read_text())
    prof.unlink()
    nodes: dict[str, tuple[str, str]] = {}
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in a and e["name"].endswith("_kernel_time"):
            nodes[e["name"][: -len("_kernel_time")]] = (a["op_name"], a["provider"])
    import onnx

    opt = onnx.load(str(optimized), load_external_data=False)
    memcpy = [f"{n.name} ({n.op_type})" for n in opt.graph.node if n.op_type.startswith("Memcpy")]
    optimized.unlink()
    for extra in log_path.parent.glob(f".optimized_{model_dir.name}.onnx*"):
        extra.unlink()
    graph_session = runner.Session(model_dir, device=device)  # the runner's own session: did CUDA graphs engage?
    lines = verbose.read_text(errors="replace").splitlines()
    verbose.unlink()
    keep, on = [], False
    for ln in lines:  # the "Node placements" block of the verbose log
        if "Node placements" in ln:
            on = True
        if on and ("placed on" in ln or ln.startswith("  ") or "Node placements" in ln):
            keep.append(ln.strip()[:200])
        elif on and keep and "placed on" not in ln and not ln.startswith(" "):
            on = False
    by_provider: dict[str, dict[str, int]] = {}
    for op, prov in nodes.values():
        by_provider.setdefault(prov, {}).setdefault(op, 0)
        by_provider[prov][op] += 1
    cpu_compute = sorted({f"{n} ({op})" for n, (op, prov) in nodes.items() if prov != "CUDAExecutionProvider"
                          and (op in COMPUTE or (op == "Gather" and n.startswith(WEIGHT_GATHERS)))})
    cpu_other = sorted({f"{n} ({op})" for n, (op, prov) in nodes.items() if prov != "CUDAExecutionProvider"} - set(cpu_compute))
    with open(log_path, "a") as f:
        f.write(f"\n== {model_dir.name}: onnxruntime verbose placement log\n" + "\n".join(keep[:60]) + "\n")
    return {"providers": s.sess.get_providers(), "nodes_by_provider": by_provider, "cpu_compute_nodes": cpu_compute, "cpu_other_nodes": cpu_other,
            "all_compute_on_cuda": not cpu_compute, "verbose_placement": keep[:30], "lowering": s.lowering,
            "kv_cache": s.kv_cache, "memcpy_nodes": memcpy, "runner_cuda_graph": graph_session.cuda_graph}


def check_family(family: str, work: Path, log_path: Path, dev: str = "cuda", kernels: str = "onnxruntime") -> dict:
    import numpy as np
    import torch

    import archc
    from archc.components import PositionIds
    from archc.loader import load_spec
    from exporters.onnx_export import export
    from exporters.torch_module import build_module

    path, sets = FAMILIES[family]
    spec = load_spec(ROOT / path, sets + [f"name={family}-small"])
    graph = archc.compile(spec)
    model_dir = work / f"{family}-small-cuda-fp16"
    res = export(graph, model_dir, target="cuda" if dev == "cuda" else "portable", dtype="fp16" if dev == "cuda" else "fp32",
                 kernels=kernels)
    out: dict = {"family": family, "sets": sets, "params": archc.cost.cost(graph).params, "kernels": kernels,
                 "lowering": res.lowering}

    # left-padded batch of two prompts (lengths 12 and 9)
    g = torch.Generator().manual_seed(0)
    B, L = 2, 12
    ids = torch.randint(1, spec.vocab_size, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :3] = 0
    ids[1, :3] = 0
    lens = mask.sum(1)
    needs_prefix = "prefix_len" in graph.graph_inputs()
    glm2d = graph.model.position_ids is PositionIds.glm2d
    ref_model = build_module(graph, dtype=torch.float32, device=dev)

    steps = 3
    next_tok = torch.randint(1, spec.vocab_size, (steps, B, 1), generator=g)

    def torch_steps():
        outs, past, m = [], None, mask.to(dev)
        kw = {"prefix_len": lens.to(dev)} if needs_prefix else {}
        with torch.no_grad():
            logits, past = ref_model(ids.to(dev), attention_mask=m, **kw)
            outs.append(logits.cpu())
            for t in range(steps):
                m = torch.cat([m, torch.ones(B, 1, dtype=torch.long, device=dev)], 1)
                logits, past = ref_model(next_tok[t].to(dev), attention_mask=m, past_key_values=past, **kw)
                outs.append(logits.cpu())
        return outs

    ort_logits: list = []

    def ort_steps(s):
        m = mask.numpy()
        pl = lens.numpy() if needs_prefix else None
        logits, past = s.forward(ids.numpy(), m, prefix_len=pl)
        ort_logits.append(logits)
        for t in range(steps):
            m = np.concatenate([m, np.ones((B, 1), np.int64)], 1)
            logits, past = s.forward(next_tok[t].numpy(), m, prefix_len=pl, past=past)
            ort_logits.append(logits)

    out["placement"] = placement(model_dir, ort_steps, log_path, dev)
    ref = torch_steps()
    errs = []
    for i, (a, b) in enumerate(zip(ort_logits, ref)):
        a = torch.from_numpy(np.asarray(a, np.float32))
        real = mask.bool() if i == 0 else torch.ones(B, 1, dtype=torch.bool)
        errs.append(((a - b)[real].norm() / b[real].norm()).item())
    out["fp16_vs_fp32_rel_err"] = {"prefill": errs[0], "decode": errs[1:], "max": max(errs), "pass": max(errs) < 2e-2}

    # archc run --device cuda, end to end, vs greedy decoding of the fp32 torch module
    prompt = ids[0].tolist()
    n_new = 8
    cmd = [sys.executable, "-c", "import sys; from archc.cli import main; sys.exit(main())", "run", str(model_dir),
           "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(n_new), "--device", dev]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "")))
    out["archc_run"] = {"cmd": "archc run " + " ".join(cmd[4:]), "rc": p.returncode, "stdout": p.stdout.strip()[-800:],
                        "stderr": p.stderr.strip()[-800:]}
    with torch.no_grad():
        x = torch.tensor([prompt], device=dev)
        kw = {"prefix_len": torch.tensor([len(prompt)], device=dev)} if needs_prefix else {}
        logits, past = ref_model(x, **kw)
        toks = [int(logits[0, -1].argmax())]
        m = torch.ones(1, len(prompt), dtype=torch.long, device=dev)
        for k in range(1, n_new):
            m = torch.cat([m, m.new_ones(1, 1)], 1)
            pos = None
            if glm2d:
                # GLM generation positions (as the runner): row 0 stays at the last prompt position, block row = k
                pos = torch.tensor([[[len(prompt) - 1], [k]]], device=dev)
            logits, past = ref_model(torch.tensor([[toks[-1]]], device=dev), attention_mask=m, position_ids=pos,
                                     past_key_values=past, **kw)
            toks.append(int(logits[0, -1].argmax()))
    out["archc_run"]["torch_fp32_greedy"] = toks
    with open(log_path, "a") as f:
        f.write(f"\n== {family}: archc run --device cuda (rc {p.returncode})\n{p.stdout}\n{p.stderr[-2000:]}\n")
    del ref_model
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of gpu_checks.json and gpu_checks.log (made if absent)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the plumbing (portable fp32)")
    kernels_arg.add_kernels(ap)
    outputs.add_force(ap)
    args = ap.parse_args()
    kernels_arg.refuse_archc_off_cuda(ap, args.kernels, args.device)
    log_path = args.out / "gpu_checks.log"
    outputs.check_outputs(ap, args.force, ("--out", args.out / "gpu_checks.json"), ("--out", log_path))
    import torch

    from archc.bench.harness import environment

    args.out.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")  # this run's log (the checks below append to it), not a continuation of an earlier run's
    work = Path(tempfile.mkdtemp(prefix="archc-gpu-checks-"))
    report = {"environment": environment(), "families": {}}
    for fam in args.families.split(","):
        try:
            report["families"][fam] = check_family(fam, work, log_path, args.device, args.kernels)
        except Exception as e:  # keep going: one family's failure must not hide the others
            import traceback

            report["families"][fam] = {"error": f"{type(e).__name__}: {e}"[:500]}
            with open(log_path, "a") as f:
                f.write(f"\n== {fam}: FAILED\n{traceback.format_exc()}\n")
        r = report["families"][fam]
        if "error" in r:
            print(f"{fam:6s} ERROR {r['error'][:300]}")
        else:
            pl, er = r["placement"], r["fp16_vs_fp32_rel_err"]
            cuda_n = sum(pl["nodes_by_provider"].get("CUDAExecutionProvider", {}).values())
            cpu = {k: v for k, v in pl["nodes_by_provider"].items() if k != "CUDAExecutionProvider"}
            print(f"{fam:6s} providers={pl['providers'][0]} cuda_nodes={cuda_n} other={cpu} compute_on_cpu={pl['cpu_compute_nodes']} "
                  f"rel_err prefill={er['prefill']:.2e} decode_max={max(er['decode']):.2e} pass={er['pass']} "
                  f"run_rc={r['archc_run']['rc']} memcpy={pl['memcpy_nodes']} cuda_graph={pl['runner_cuda_graph']}")
            print(f"       archc run: {r['archc_run']['stdout'][-300:]!r}  torch fp32 greedy: {r['archc_run']['torch_fp32_greedy']}")
        (args.out / "gpu_checks.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
