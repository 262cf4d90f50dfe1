"""Where archc's prefill loses to onnxruntime-genai's, kernel by kernel, in one run on one card (GPU).

    PYTHONPATH=/tmp/site:$PWD python3 -m benchmarks.prefill_vs_genai --out DIR [--engines ...]

1. Builds a TinyLlama-shaped transformers LlamaForCausalLM (22 layers, d_model 2048, 32/4 heads, d_ff
   5632, vocab 32000; random weights, fp16 safetensors) and a word-level tokenizer.json made with the
   `tokenizers` library, then genai's own export of it: `python -m onnxruntime_genai.models.builder
   -i HF -o GENAI -p fp16 -e cuda` (its defaults: packed q|k|v, rotary inside GroupQueryAttention,
   gate and up as two MatMuls, fp16 logits for every position).
2. Each engine runs in its own process (engines are separated by ';'):
   - `genai-onnx`: genai's model.onnx in a plain onnxruntime session (CUDA provider, no graph).
   - `archc[:key=value,...]`: archc's llama spec at the same shape, `--target cuda --dtype fp16`
     (seeded weights: kernel times do not depend on the values); keys `gate_up=one_gemm|two_gemms`
     (exporters.onnx_lowering_cuda.GATE_UP), `logits=all|last`, `logits_start=-1` (the plain-session prefill
     feeds the `all` model's logits_start, bound on the host as the runner binds it; without the key it is
     not fed: full logits, as genai-onnx computes). It also times archc's runner
     (`Session.generate`, as `archc bench`'s ort backend: prefill = median T(1), decode tok/s from
     (T(N) - T(1)) / (N - 1)).
   - `genai-gen`: genai's own generator on genai's export (prefill = append_tokens + the first token;
     decode with `enable_cuda_graph=1` at batch 1, without at batch 16, where its graph mode fails).
   In `genai-onnx` and `archc`, the prefill is timed the same way for both models: inputs and the
   max-length KV buffers (bound as past and present, as both runtimes do) bound once, logits left on
   the device, then the median of `--runs` calls of run_with_iobinding (which waits for the GPU). A
   CUPTI trace (torch.profiler) of 5 more calls gives the kernels per prefill, grouped by name.
Writes DIR/prefill_vs_genai.json (one entry per engine; an existing one: --force) and prints a per-shape comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks import outputs

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(n_layers=22, d_model=2048, n_heads=32, kv_heads=4, d_ff=5632, vocab=32000, max_seq_len=4096)
ARCHC_SET = [f"n_layers={SHAPE['n_layers']}", f"d_model={SHAPE['d_model']}", f"attention.n_heads={SHAPE['n_heads']}",
             f"attention.kv_heads={SHAPE['kv_heads']}", "attention.sharing=gqa", f"mlp.d_ff={SHAPE['d_ff']}",
             f"vocab_size={SHAPE['vocab']}", f"max_seq_len={SHAPE['max_seq_len']}"]
SHAPES = [(1, 512), (1, 2048), (16, 512)]  # (batch, prompt)
NEW = 64  # new tokens for the runner's decode figure


def build_hf_and_genai(work: Path) -> dict:
    """HF checkpoint + tokenizer.json, then genai's builder; skipped where already made."""
    hf, gd = work / "hf", work / "genai"
    out: dict = {}
    if not (hf / "config.json").exists():
        import torch
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import LlamaConfig, LlamaForCausalLM

        t0 = time.perf_counter()
        cfg = LlamaConfig(hidden_size=SHAPE["d_model"], intermediate_size=SHAPE["d_ff"], num_hidden_layers=SHAPE["n_layers"],
                          num_attention_heads=SHAPE["n_heads"], num_key_value_heads=SHAPE["kv_heads"], vocab_size=SHAPE["vocab"],
                          max_position_embeddings=SHAPE["max_seq_len"], rms_norm_eps=1e-5, tie_word_embeddings=False,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
        torch.manual_seed(0)
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg).half()
        m.save_pretrained(hf, safe_serialization=True)
        del m
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, SHAPE["vocab"])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(hf / "tokenizer.json"))
        (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                                              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
        out["hf_s"] = round(time.perf_counter() - t0, 1)
    if not (gd / "genai_config.json").exists():
        t0 = time.perf_counter()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        p = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(gd), "-p", "fp16",
                            "-e", "cuda", "-c", str(work / "cache")], env=env, capture_output=True, text=True)
        out["genai_build_s"] = round(time.perf_counter() - t0, 1)
        out["genai_build_rc"] = p.returncode
        if p.returncode:
            out["genai_build_err"] = (p.stderr or p.stdout)[-2000:]
            return out
        cfg = json.loads((gd / "genai_config.json").read_text())
        cfg["model"]["eos_token_id"] = SHAPE["vocab"] - 1  # random weights: keep the stop id out of the way
        (gd / "genai_config.json").write_text(json.dumps(cfg))
    return out


def op_counts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    c: dict = {}
    for n in m.graph.node:
        c[n.op_type] = c.get(n.op_type, 0) + 1
    return {"nodes": len(m.graph.node), "ops": dict(sorted(c.items(), key=lambda kv: -kv[1])),
            "outputs": {o.name: onnx.helper.printable_type(o.type) for o in m.graph.output[:3]}}


def onnx_prefill(path: Path, runs: int, extra_opts: dict | None = None, logits_start: int | None = None) -> dict:
    """Prefill of one ONNX decoder in a plain session, every shape in SHAPES: timing + CUPTI kernels.
    logits_start: fed to the model's overridable initializer of that name (None: not fed)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from benchmarks.kernel_trace import kernel_events

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=[("CUDAExecutionProvider", {"device_id": 0, **(extra_opts or {})})])
    ins = {i.name: i for i in sess.get_inputs()}
    cache_type = {"tensor(float16)": np.float16, "tensor(bfloat16)": None}[ins["past_key_values.0.key"].type]
    res: dict = {}
    for B, L in SHAPES:
        rng = np.random.default_rng(L)
        max_len = L + 128
        cache = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((B, SHAPE["kv_heads"], max_len, SHAPE["d_model"] // SHAPE["n_heads"]), cache_type), "cuda", 0)
                 for n in ins if n.startswith("past_key_values.")}
        feeds = {"input_ids": rng.integers(3, SHAPE["vocab"] - 1, (B, L)).astype(np.int64), "attention_mask": np.ones((B, L), np.int64),
                 "position_ids": np.tile(np.arange(L, dtype=np.int64), (B, 1))}
        io = sess.io_binding()
        for n in ins:
            if n in cache:
                io.bind_ortvalue_input(n, cache[n])
            elif n in feeds:
                io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(feeds[n], "cuda", 0))
            else:
                raise SystemExit(f"{path}: input {n} has no feed here")
        if logits_start is not None:  # an overridable initializer: bind_cpu_input cannot bind it, an OrtValue can
            io.bind_ortvalue_input("logits_start", ort.OrtValue.ortvalue_from_numpy(np.array([logits_start], np.int64), "cpu", 0))
        for o in sess.get_outputs():
            past = o.name.replace("present.", "past_key_values.")
            if past in cache:
                io.bind_ortvalue_output(o.name, cache[past])
            else:
                io.bind_output(o.name, "cuda", 0)
        for _ in range(3):
            sess.run_with_iobinding(io)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run_with_iobinding(io)
            ts.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        n_prof = 5
        events = kernel_events(lambda: sess.run_with_iobinding(io), n_prof)
        by: dict = {}
        for e in events:
            by.setdefault(e["name"], []).append(e["dur"])
        total = sum(sum(v) for v in by.values()) / n_prof
        top = sorted(((sum(v) / n_prof, len(v) / n_prof, k) for k, v in by.items()), reverse=True)
        res[f"b{B}_p{L}"] = {"run_ms_median": statistics.median(ts), "run_ms_min": min(ts), "kernel_us_sum": total,
                             "kernels_per_run": sum(len(v) for v in by.values()) / n_prof,
                             "kernels": [{"us": round(us, 1), "n": round(c, 1), "name": k[:140]} for us, c, k in top[:30]]}
        del io, cache
    return res


def runner_times(d: Path, runs: int) -> dict:
    import numpy as np

    from archc.runner import Session

    s = Session(d, device="cuda")
    out: dict = {"cuda_graph": s.cuda_graph}
    for B, L in SHAPES:
        prompts = np.random.default_rng(L).integers(3, SHAPE["vocab"] - 1, (B, L)).tolist()

        def t(n):
            t0 = time.perf_counter()
            r = s.generate(prompts, n)
            return time.perf_counter() - t0, r

        for _ in range(2):
            t(1), t(NEW)
        t1 = statistics.median(t(1)[0] for _ in range(runs))
        tn = [t(NEW) for _ in range(3)]
        tpot = (statistics.median(x for x, _ in tn) - t1) / (NEW - 1)
        out[f"b{B}_p{L}"] = {"prefill_ms": t1 * 1e3, "decode_tok_s": B / tpot, "ids_head": tn[-1][1].ids[0][:8]}
    return out


def child_archc(opts: dict, work: Path, runs: int) -> dict:
    import archc
    from archc.model_dir import MODEL_FILE
    from archc.loader import load_spec
    from exporters import onnx_lowering_cuda
    from exporters.onnx_export import export

    opts.pop("root", None)  # the parent put that tree first on PYTHONPATH
    start = opts.pop("logits_start", None)  # a feed, not an export option: the same model directory
    if "gate_up" in opts:
        onnx_lowering_cuda.GATE_UP = onnx_lowering_cuda.GateUp(opts["gate_up"])
    graph = archc.compile(load_spec(ROOT / "specs" / "llama.yaml", ARCHC_SET))
    d = work / ("archc-" + "-".join(f"{k}_{v}" for k, v in sorted(opts.items())) if opts else work / "archc")
    t0 = time.perf_counter()
    if not (d / MODEL_FILE).exists():
        export(graph, d, target="cuda", dtype="fp16", logits=opts.get("logits", "all"))
    out = {"export_s": round(time.perf_counter() - t0, 1), "graph": op_counts(d / MODEL_FILE)}
    out["prefill_onnx"] = onnx_prefill(d / MODEL_FILE, runs, logits_start=None if start is None else int(start))
    out["runner"] = runner_times(d, runs)
    return out


def child_genai_onnx(work: Path, runs: int) -> dict:
    path = work / "genai" / "model.onnx"
    return {"graph": op_counts(path), "prefill_onnx": onnx_prefill(path, runs)}


def child_genai_gen(work: Path, runs: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    out: dict = {}
    for graph_mode in (False, True):
        config = og.Config(str(work / "genai"))
        config.clear_providers()
        config.append_provider("cuda")
        if graph_mode:
            config.set_provider_option("cuda", "enable_cuda_graph", "1")
        model = og.Model(config)
        key = "graph" if graph_mode else "nograph"
        for B, L in SHAPES:
            if graph_mode and B > 1:
                continue  # its graph mode fails at batch 16 (issue 14)
            prompts = np.random.default_rng(L).integers(3, SHAPE["vocab"] - 1, (B, L)).astype(np.int32)

            def gen(n):
                params = og.GeneratorParams(model)
                params.set_search_options(do_sample=False, max_length=L + n, **({"batch_size": B} if B > 1 else {}))
                g = og.Generator(model, params)
                t0 = time.perf_counter()
                g.append_tokens(prompts)
                g.generate_next_token()
                g.get_next_tokens()
                t1 = time.perf_counter()
                for _ in range(n - 1):
                    g.generate_next_token()
                    g.get_next_tokens()
                t2 = time.perf_counter()
                del g
                return t1 - t0, t2 - t1

            try:
                for _ in range(2):
                    gen(NEW)
                pre = statistics.median(gen(1)[0] for _ in range(runs))
                dec = statistics.median(gen(NEW)[1] for _ in range(3))
                out[f"{key}_b{B}_p{L}"] = {"prefill_ms": pre * 1e3, "decode_tok_s": B * (NEW - 1) / dec}
            except Exception as e:  # noqa: BLE001 - one shape failing leaves the others
                out[f"{key}_b{B}_p{L}"] = {"error": str(e)[:300]}
        del model
    return out


def child(args) -> dict:
    name = args.child
    kind, _, opt_text = name.partition(":")
    opts = dict(kv.split("=", 1) for kv in filter(None, opt_text.split(",")))
    if kind == "archc":
        return child_archc(opts, args.work, args.runs)
    if kind == "genai-onnx":
        return child_genai_onnx(args.work, args.runs)
    if kind == "genai-gen":
        return child_genai_gen(args.work, args.runs)
    raise SystemExit(f"--engines: unknown engine {name!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of prefill_vs_genai.json (made if absent)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/prefill_vs_genai"))
    ap.add_argument("--engines", default="genai-onnx;archc;archc:logits_start=-1;archc:gate_up=two_gemms;archc:logits=last;genai-gen")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the engine list (alternating, as ab_decode does)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    outputs.add_force(ap)
    args = ap.parse_args()
    if args.child:
        try:
            r = child(args)
        except Exception:  # noqa: BLE001 - the parent records it and goes on with the next engine
            r = {"error": traceback.format_exc()[-3000:]}
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    outputs.check_outputs(ap, args.force, ("--out", args.out / "prefill_vs_genai.json"))  # before the build, the slow part
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"shape": SHAPE, "build": build_hf_and_genai(args.work), "engines": []}
    print(json.dumps(result["build"]), flush=True)
    for rnd in range(args.rounds):
        for eng in filter(None, args.engines.split(";")):
            t0 = time.perf_counter()
            # root=DIR (archc engines): archc/ and exporters/ from DIR (e.g. a `git archive` of main), this script from here
            root = next((kv.split("=", 1)[1] for kv in eng.partition(":")[2].split(",") if kv.startswith("root=")), None)
            env = dict(os.environ)
            if root:
                env["PYTHONPATH"] = os.pathsep.join([str((ROOT / root).resolve()), str(ROOT)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
            p = subprocess.run([sys.executable, "-m", "benchmarks.prefill_vs_genai", "--out", str(args.out), "--work", str(args.work),
                                "--runs", str(args.runs), "--child", eng], capture_output=True, text=True, cwd=ROOT, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"error": (p.stderr or p.stdout)[-3000:]}
            r.update(engine=eng, round=rnd, wall_s=round(time.perf_counter() - t0, 1))
            result["engines"].append(r)
            (args.out / "prefill_vs_genai.json").write_text(json.dumps(result, indent=1))
            summary(r)
    return 0


def summary(r: dict) -> None:
    print(f"== {r['engine']} (round {r['round']}, {r['wall_s']} s)" + (f" ERROR {r['error'][-600:]}" if "error" in r else ""), flush=True)
    for k, v in r.get("prefill_onnx", {}).items():
        print(f"  {k}: run {v['run_ms_median']:.3f} ms (min {v['run_ms_min']:.3f}), kernels {v['kernel_us_sum'] / 1e3:.3f} ms, "
              f"{v['kernels_per_run']:.0f} launches", flush=True)
        for t in v["kernels"][:12]:
            print(f"      {t['us']:9.1f} us x{t['n']:5.1f} {t['name'][:100]}")
    for k, v in r.get("runner", {}).items():
        print(f"  runner {k}: {v}")
    for k, v in r.items():
        if k.startswith(("graph_", "nograph_")):
            print(f"  genai {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
