"""archc against onnxruntime-genai on one checkpoint, the whole table of issue 14 in one invocation (GPU).

    PYTHONPATH=/tmp/site:$PWD python -m benchmarks.genai_compare OUT.json [--deadline-s 540]
    python -m benchmarks.genai_compare --render OUT.json         # the markdown table and Done-when verdicts
    python -m benchmarks.genai_compare OUT.json --tiny --device cpu  # the orchestration on a CPU (seconds)

The checkpoint: the llama spec at TinyLlama-1.1B's shape (benchmarks/standard.py), archc's seeded init written
as a Hugging Face directory in fp16 (`archc export-hf`) with a placeholder tokenizer (genai's builder needs
one; archc.bench.genai.write_placeholder_tokenizer). Both engines read that directory: archc compiles it
(`compile HF_DIR --target cuda --dtype fp16 [--quant int4]`) and runs its runner; genai's builder builds it
(`-p fp16|int4 -e cuda`) and genai's generator runs it, without and with CUDA graphs, in its own process
(`archc bench`'s genai backends, archc/bench/genai.py). Same timing for every backend (archc/bench/harness.py):
prefill = prompt in, first token out (a generate of 1 token); decode tok/s from (T(128) - T(1)) / 127.

Configurations, in this order, each capped by what is left of --deadline-s (a configuration that would start
past it is recorded as skipped):
  fp16    ort (archc, CUDA graph), genai, genai-graph; batch 1 and 16 x prompt 512 and 2048
  int4    ort --quant int4 and genai-graph's builder int4, both with the head dense (archc's default; genai's
          builder is told nodes_to_exclude=/lm_head/MatMul, archc.bench.genai); batch 1, prompts 512 and 2048
  int4h   ort --quant int4 --quant-head and genai-graph's builder int4 with every MatMul int4 (its own default);
          batch 1, prompts 512 and 2048
The ort rows export `archc compile`'s default `--logits all` (the contract's full logits [batch, prompt, vocab] in
fp32 for a consumer that does not feed logits_start); archc's runner feeds logits_start = -1, so its prefill
computes the head on the last position only, all a generator reads. genai's builder (fp16) computes and writes
its full logits in fp16 (its prune_lm_head is off by default).
The JSON (written after each configuration) holds the harness's raw runs, export seconds and model bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks import kernels_arg, outputs

NEW_TOKENS = 128
FP16_SHAPES = [(1, 512), (1, 2048), (16, 512), (16, 2048)]
INT4_SHAPES = [(1, 512), (1, 2048)]
TINY_SHAPES = [(1, 12), (2, 12)]


def configs(tiny: bool) -> list[dict]:
    from archc.quant import QuantKind, QuantSettings

    int4, int4h = QuantSettings(QuantKind.int4), QuantSettings(QuantKind.int4, head=True)
    if tiny:
        return [{"name": "fp16", "quant": None, "backends": ["ort", "genai", "genai-graph"], "shapes": TINY_SHAPES},
                {"name": "int4", "quant": int4, "backends": ["ort", "genai-graph", "genai"], "shapes": TINY_SHAPES[:1]},
                {"name": "int4h", "quant": int4h, "backends": ["ort", "genai-graph"], "shapes": TINY_SHAPES[:1]}]
    # est_s: what a configuration takes on an H200 (exports and builds, then the runs), so none starts
    # that cannot finish before the deadline (session 3's run: about 110 s for each int4 configuration)
    return [{"name": "fp16", "quant": None, "backends": ["ort", "genai", "genai-graph"], "shapes": FP16_SHAPES, "est_s": 120},
            {"name": "int4", "quant": int4, "backends": ["ort", "genai-graph"], "shapes": INT4_SHAPES, "est_s": 120},
            {"name": "int4h", "quant": int4h, "backends": ["ort", "genai-graph"], "shapes": INT4_SHAPES, "est_s": 120}]


def measure(out_json: Path, *, tiny: bool, device: str, deadline_s: float, work_dir: Path | None, with_limits: bool = False,
            kernels: str = "onnxruntime") -> dict:
    import archc
    from archc.bench.genai import write_placeholder_tokenizer
    from archc.bench.harness import Bench, Shape, environment, measure_limits
    from archc.commands.bench_cmds import write_json_atomic
    from archc.hf.export import export_hf, seeded_source
    from benchmarks.standard import load_family

    t_start = time.perf_counter()
    dtype = "fp16" if device == "cuda" else "fp32"  # genai's CPU build of fp16 is not what a CPU user runs
    new_tokens = 8 if tiny else NEW_TOKENS
    spec = load_family("llama", tiny=tiny)
    graph = archc.compile(spec)
    work = Path(work_dir or tempfile.mkdtemp(prefix="genai-compare-"))
    hf = work / "hf"
    t = time.perf_counter()
    if not (hf / "tokenizer.json").is_file():
        export_hf(graph, hf, seeded_source(graph), dtype="float16" if dtype == "fp16" else "float32", force=True)
        write_placeholder_tokenizer(hf, spec.vocab_size)
    report: dict = {"environment": environment(), "spec": spec.name, "params": None, "dtype": dtype, "new_tokens": new_tokens,
                    "hf_dir_s": time.perf_counter() - t, "limits": None, "configs": [], "ort_kernels": kernels}
    try:
        import onnxruntime_genai as og

        report["environment"]["onnxruntime_genai"] = og.__version__
    except ImportError:
        report["environment"]["onnxruntime_genai"] = None  # a separate venv (ARCHC_GENAI_PYTHON) runs it
    # the card's limits (roofline columns) only when asked: seconds of a scarce device session
    limits = measure_limits(device, dtypes=(dtype,)) if device == "cuda" and with_limits else {}
    report["limits"] = limits or None
    for cfg in configs(tiny):
        entry = {"name": cfg["name"], "quant": cfg["quant"].short() if cfg["quant"] else "dense", "backends": cfg["backends"],
                 "ort_logits": cfg.get("logits"),
                 "runs": [], "skipped": None}
        report["configs"].append(entry)
        left = deadline_s - (time.perf_counter() - t_start)
        if left < cfg.get("est_s", 30):
            entry["skipped"] = f"deadline: {left:.0f} s left of {deadline_s:.0f}"
            print(f"{cfg['name']}: skipped ({entry['skipped']})", flush=True)
            continue
        b = Bench(graph, dtype=dtype, device=device, backends=cfg["backends"], repeats=3, prefill_repeats=5, work_dir=work,
                  limits=limits, hf_dir=hf, quant=cfg["quant"], genai_timeout_s=min(240.0, left), log=lambda m: print(m, flush=True),
                  ort_logits=cfg.get("logits"), kernels=kernels)
        try:
            for batch, prompt in cfg["shapes"]:
                if time.perf_counter() - t_start > deadline_s:
                    entry["skipped"] = f"deadline reached before batch {batch} prompt {prompt}"
                    break
                run = b.run(Shape(batch, prompt, new_tokens))
                entry["runs"].append(run)
                for r in run["backends"]:
                    print(f"{cfg['name']} b{batch} p{prompt} {r['backend']}: prefill {r['prefill_ms']} ms, "
                          f"{r['decode_tok_s']} tok/s, tokens= {r['tokens_agree']}, export {r['export_s']} s, "
                          f"{r['model_bytes']} B, error {r['error']}", flush=True)
                write_json_atomic(out_json, report)
        except Exception as e:  # noqa: BLE001 - one configuration's failure is recorded; the others still run
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"{cfg['name']}: {entry['error']}", flush=True)
        finally:
            b.close()
        write_json_atomic(out_json, report)
    report["wall_s"] = time.perf_counter() - t_start
    write_json_atomic(out_json, report)
    return report


# ------------------------------------------------------------------------------------------------
# The table and the verdicts


def _row(report: dict, config: str, backend: str, batch: int, prompt: int) -> dict | None:
    for c in report["configs"]:
        if c["name"] != config:
            continue
        for run in c["runs"]:
            if run["batch"] == batch and run["prompt_len"] == prompt:
                return next((b for b in run["backends"] if b["backend"] == backend), None)
    return None


def _ok(r: dict | None) -> bool:
    return r is not None and r.get("error") is None and r.get("prefill_ms") is not None


def _fmt(x, f="{:.2f}") -> str:
    return "-" if x is None else f.format(x)


def render(report: dict) -> str:
    env = report["environment"]
    lines = [f"Card: {env.get('card', 'cpu')}; archc {env.get('archc_commit')}; onnxruntime {env.get('onnxruntime')}, "
             f"onnxruntime-genai {env.get('onnxruntime_genai')}; torch {env.get('torch')}; {env.get('date')}; "
             f"ort rows compiled with --kernels {report.get('ort_kernels', 'onnxruntime')}.", "",
             "| config | backend | batch | prompt | prefill ms | decode tok/s | tokens = archc | export s | model MiB | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in report["configs"]:
        if c.get("skipped") and not c["runs"]:
            lines.append(f"| {c['name']} | - | | | | | | | | skipped: {c['skipped']} |")
        for run in c["runs"]:
            for b in run["backends"]:
                agree = "ref" if b["backend"] == "ort" else _fmt(b["tokens_agree"], "{}")
                lines.append(f"| {c['name']} ({c['quant']}) | {b['backend']} | {run['batch']} | {run['prompt_len']} | "
                             f"{_fmt(b['prefill_ms'])} | {_fmt(b['decode_tok_s'], '{:,.0f}')} | {agree}/{run['new_tokens']} | "
                             f"{_fmt(b['export_s'], '{:.1f}')} | {_fmt(b['model_bytes'] and b['model_bytes'] / 2**20, '{:,.0f}')} | "
                             f"{(b['error'] or b.get('tokens_note') or '')[:110]} |")
    lines += ["", "| Done when | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {m} | {v} |" for a, m, v in verdicts(report)]
    return "\n".join(lines)


def _genai_best_prefill(report, batch, prompt):
    rows = [r for r in (_row(report, "fp16", n, batch, prompt) for n in ("genai", "genai-graph")) if _ok(r)]
    return min(rows, key=lambda r: r["prefill_ms"]) if rows else None


def _ratio_verdict(name: str, a: dict | None, g: dict | None, target: float) -> tuple[str, str, str]:
    if not (_ok(a) and _ok(g) and a["decode_tok_s"] and g["decode_tok_s"]):
        return name, "not measured", "open"
    ratio = a["decode_tok_s"] / g["decode_tok_s"]
    return name, f"{a['decode_tok_s']:,.0f} vs {g['decode_tok_s']:,.0f} tok/s = {ratio:.2f}x", "met" if ratio >= target else "missed"


def verdicts(report: dict) -> list[tuple[str, str, str]]:
    out = []
    for batch, prompt in FP16_SHAPES:
        a, g = _row(report, "fp16", "ort", batch, prompt), _genai_best_prefill(report, batch, prompt)
        name = f"prefill <= genai's (its best mode), b{batch} p{prompt}"
        if not (_ok(a) and g):
            out.append((name, "not measured", "open"))
            continue
        out.append((name, f"archc {a['prefill_ms']:.2f} ms vs genai ({g['backend']}) {g['prefill_ms']:.2f} ms = "
                          f"{a['prefill_ms'] / g['prefill_ms']:.2f}x", "met" if a["prefill_ms"] <= g["prefill_ms"] else "missed"))
    for prompt in (512, 2048):
        out.append(_ratio_verdict(f"decode b1 fp16 >= 1.3x genai CUDA graph, p{prompt}",
                                  _row(report, "fp16", "ort", 1, prompt), _row(report, "fp16", "genai-graph", 1, prompt), 1.3))
    # genai's int4 is its builder's default (every MatMul int4: config int4h); the like-for-like dense-head pair beside it
    for prompt in (512, 2048):
        g = _row(report, "int4h", "genai-graph", 1, prompt)
        for cfg, what in (("int4", "archc int4 (head dense, its default)"), ("int4h", "archc int4 --quant-head")):
            out.append(_ratio_verdict(f"int4 decode b1 >= 1.2x genai's int4 (its default) CUDA graph, p{prompt}, {what}",
                                      _row(report, cfg, "ort", 1, prompt), g, 1.2))
        out.append(_ratio_verdict(f"(like for like) archc int4 vs genai int4, both with the head dense, p{prompt}",
                                  _row(report, "int4", "ort", 1, prompt), _row(report, "int4", "genai-graph", 1, prompt), 1.2))
    g = _row(report, "int4h", "genai-graph", 1, 512)
    for cfg, what in (("int4", "archc int4 (head dense, its default)"), ("int4h", "archc int4 --quant-head (head int4 as genai's)")):
        a = _row(report, cfg, "ort", 1, 512)
        name = f"int4 size within 5% of genai's int4 (its default): {what}"
        if not (a and g and a.get("model_bytes") and g.get("model_bytes")):
            out.append((name, "not measured", "open"))
            continue
        d = a["model_bytes"] / g["model_bytes"] - 1
        out.append((name, f"{a['model_bytes'] / 2**20:,.0f} vs {g['model_bytes'] / 2**20:,.0f} MiB = {100 * d:+.1f}%",
                    "met" if abs(d) <= 0.05 else "missed"))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?", help="JSON file, rewritten after each configuration (an existing one: --force)")
    outputs.add_force(p)
    p.add_argument("--render", type=Path, help="print the table and verdicts of a JSON this module wrote")
    p.add_argument("--tiny", action="store_true", help="the tiny llama (orchestration check)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--deadline-s", type=float, default=540.0, help="no configuration or shape starts past this")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--limits", action="store_true", help="measure the card's copy bandwidth and GEMM rate too (roofline columns)")
    kernels_arg.add_kernels(p, "the ort rows'")
    a = p.parse_args(argv)
    if a.render:
        print(render(json.loads(a.render.read_text())))
        return
    if a.out is None:
        p.error("give OUT.json (or --render JSON)")
    kernels_arg.refuse_archc_off_cuda(p, a.kernels, a.device)
    outputs.check_outputs(p, a.force, ("OUT.json", a.out))
    report = measure(a.out, tiny=a.tiny, device=a.device, deadline_s=a.deadline_s, work_dir=a.work_dir, with_limits=a.limits,
                     kernels=a.kernels)
    print(render(report))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
