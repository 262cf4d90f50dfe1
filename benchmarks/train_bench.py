"""Training throughput of the emitted module against transformers, and its static-cache decode (issue 11).

    python3 -m benchmarks.train_bench --out OUT/train_bench.jsonl                  # the whole table
    python3 -m benchmarks.train_bench --families llama --cases archc-eager,hf-eager --out ...
    python3 -m benchmarks.train_bench --tiny --device cpu --out /tmp/t.jsonl       # orchestration check

Training cases, per family of benchmarks/standard.py (about 1.1 B parameters), bf16 weights, fused
AdamW, batch x seq tokens per step (default 4 x 2048), no gradient accumulation:
  archc-eager     build_module(...).loss (chunked cross-entropy), eager
  archc-compile   the same under torch.compile (default mode)
  hf-eager        the transformers class (archc.bench.hf) with attn_implementation sdpa, model(ids, labels=ids)
  hf-compile      the same under torch.compile
HF runs in eval() mode (dropout off; its configs carry dropout, archc's graph has none); gradients flow
as usual. tokens/s = timed steps x batch x seq / wall time (CUDA synchronised); peak memory = the
allocator's peak over the timed steps; MFU = model FLOPs / time / the bf16 GEMM rate measured in the same
run (8192^3 matmul, archc.bench.harness.measure_limits), model FLOPs per token = 6 N + 12 L H Q T (PaLM,
appendix B: N the matmul parameters, the head included, embedding tables excluded).
Decode cases (batch 1, prompt 512, 128 new tokens, each dtype of --decode-dtypes):
  archc-decoder   exporters.torch_decode.Decoder, the fast path: static KV cache, the step (forward, argmax,
                  state update) compiled by inductor with coordinate_descent_tuning, --graph-steps steps per
                  CUDA-graph replay, q|k|v and gate|up packed
  archc-decode    static_greedy with the static KV cache, the model under torch.compile (mode
                  reduce-overhead: CUDA graphs per step, fullgraph): the previous path, for comparison
  hf-decode       transformers' generate with cache_implementation static (its own torch.compile)
  hf-sdpa-decode  transformers' generate, attn_implementation sdpa, its default dynamic cache, eager
Timing: two warm-up generates (compile, capture), then best of --repeats of T(1) and of T(new);
decode tok/s = (new - 1) / (T(new) - T(1)). A "decode-summary" line per dtype gives archc-decoder's
ratio to the best transformers case measured in the same process.
Every case runs in try/except with a time cap (SIGALRM) and appends one JSON line to --out at once;
--deadline-s stops starting new cases once the run has lasted that long.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

TRAIN_CASES = ("archc-eager", "archc-compile", "hf-eager", "hf-compile")
DECODE_CASES = ("archc-decoder", "archc-decode", "hf-decode", "hf-sdpa-decode")
HF_DECODE = ("hf-decode", "hf-sdpa-decode")


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout("time cap reached")


def model_flops_per_token(graph, seq: int) -> int:
    """6 N + 12 L H Q T (PaLM appendix B): N = matmul parameters (head included, embedding tables not)."""
    from archc.graph import ComponentKind as K

    n = 0
    for name, shape, node in graph.params():
        kind = graph.node(node)["kind"]
        if kind in (K.token_embedding.value, K.learned_position.value, K.glm2d_position.value) or len(shape) < 2:
            continue
        n += shape[0] * shape[1]
    for tied, owner in graph.tied().items():  # a tied head still multiplies
        if tied.startswith("head."):
            n += graph.g.nodes["embed"]["params"]["weight"][0] * graph.g.nodes["embed"]["params"]["weight"][1]
    attn = 0
    for node in graph.nodes():
        if graph.node(node)["kind"] == K.attention.value:
            s = graph.node(node)["settings"]
            attn += 12 * s.n_heads * s.head_dim * seq
    return 6 * n + attn


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def train_case(case: str, graph, device, dtype, batch: int, seq: int, steps: int, warmup: int) -> dict:
    import torch

    from exporters.torch_module import build_module

    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, graph.spec.vocab_size, (batch, seq + 1), generator=g).to(device) for _ in range(4)]
    archc_model = build_module(graph, dtype=dtype, device=device)
    if case.startswith("archc"):
        model = archc_model.train()
        fn = torch.compile(model.loss) if case == "archc-compile" else model.loss

        def step_loss(x):
            return fn(x[:, :-1], x[:, 1:])
    else:
        from archc.bench.hf import build_hf_model

        try:
            model, _ = build_hf_model(graph, archc_model.state_dict(), dtype=dtype, device=device, attn_implementation="sdpa")
            hf_attn = "sdpa"
        except (ValueError, ImportError):  # a class without sdpa (transformers' Bloom): its eager attention
            model, _ = build_hf_model(graph, archc_model.state_dict(), dtype=dtype, device=device, attn_implementation="eager")
            hf_attn = "eager"
        del archc_model
        model.eval()  # dropout off (see the module docstring); autograd as usual
        fwd = torch.compile(model) if case == "hf-compile" else model

        def step_loss(x):
            return fwd(input_ids=x[:, :-1], labels=x[:, :-1]).loss
    gc.collect()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    losses = []

    def step(i):
        loss = step_loss(data[i % len(data)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    for i in range(warmup):
        losses.append(float(step(i)))
    _sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    _sync(device)
    dt = time.perf_counter() - t0
    losses.append(float(loss))
    tok_s = steps * batch * seq / dt
    out = {"hf_attn": hf_attn} if case.startswith("hf") else {}
    out.update({"tokens_per_s": tok_s, "step_ms": 1000 * dt / steps, "warmup_s": warm_s, "losses": losses,
           "flops_per_token": model_flops_per_token(graph, seq)})
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    return out


def decode_case(case: str, graph, device, dtype, prompt: int, new: int, repeats: int = 3, graph_steps: int = 16) -> dict:
    import torch

    from exporters.torch_decode import Decoder
    from exporters.torch_module import build_module, static_greedy

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, graph.spec.vocab_size, (1, prompt), generator=g).to(device)
    mask = torch.ones_like(ids)
    model = build_module(graph, dtype=dtype, device=device)
    from torch._dynamo.utils import counters

    counters.clear()
    if case == "archc-decoder":
        decoder = Decoder(model, 1, prompt + new, compile=True, graph_steps=graph_steps)

        def gen(n):
            return decoder.generate(ids, mask, n)
    elif case == "archc-decode":
        step = torch.compile(model, mode="reduce-overhead", fullgraph=True)

        def gen(n):
            with torch.no_grad():
                return static_greedy(model, ids, mask, n, step=step)
    elif case in HF_DECODE:
        from archc.bench.hf import build_hf_model

        hf, _ = build_hf_model(graph, model.state_dict(), dtype=dtype, device=device, attn_implementation="sdpa")
        del model
        model = hf
        kw = {"cache_implementation": "static"} if case == "hf-decode" else {}

        def gen(n):
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  num_beams=1, **kw)
            return out[:, prompt:]
    else:
        raise ValueError(f"unknown decode case {case}")
    t0 = time.perf_counter()
    for _ in range(2):  # compile + CUDA-graph capture
        gen(new)
    _sync(device)
    warm_s = time.perf_counter() - t0

    def timed(n):
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            toks = gen(n)
            _sync(device)
            best = min(best, time.perf_counter() - t)
        return best, toks

    t_pre, _ = timed(1)
    t_all, toks = timed(new)
    out = {"decode_tokens_per_s": (new - 1) / (t_all - t_pre), "prefill_ms": 1000 * t_pre, "generate_ms": 1000 * t_all,
           "ms_per_token": 1000 * (t_all - t_pre) / (new - 1), "warmup_s": warm_s, "first_tokens": toks[0, :16].tolist()}
    if case.startswith("archc"):
        out["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
    if case == "archc-decoder":
        out["graph_steps"] = graph_steps
    del model
    return out


def decode_summary(records: list, dtype_name: str) -> dict:
    """archc-decoder against the best transformers decode of the same dtype, all from this process."""
    ok = {r["case"]: r for r in records if r.get("kind") == "decode" and r.get("ok") and r.get("dtype") == dtype_name}
    out = {"kind": "decode-summary", "dtype": dtype_name, "cases": {c: r["decode_tokens_per_s"] for c, r in ok.items()}}
    hf = [c for c in HF_DECODE if c in ok]
    if "archc-decoder" in ok and hf:
        best = max(hf, key=lambda c: ok[c]["decode_tokens_per_s"])
        a, b = ok["archc-decoder"], ok[best]
        agree = 0
        for x, y in zip(a["first_tokens"], b["first_tokens"]):
            if x != y:
                break
            agree += 1
        out.update(hf_best=best, ratio=a["decode_tokens_per_s"] / b["decode_tokens_per_s"], leading_tokens_agree=agree)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="llama,palm,bloom,gpt2,glm")
    ap.add_argument("--cases", default=",".join(TRAIN_CASES + DECODE_CASES))
    ap.add_argument("--out", required=True, help="a .jsonl file: each case appends one line at once, on purpose (a stopped run "
                    "keeps its lines; an existing file is continued, never replaced)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--cap-s", type=int, default=240, help="time cap per case")
    ap.add_argument("--deadline-s", type=int, default=0, help="start no case after this many seconds (0: none)")
    ap.add_argument("--decode-dtypes", default="bf16", help="dtypes of the decode cases (bf16, fp16)")
    ap.add_argument("--repeats", type=int, default=3, help="decode: timed generates per length (best of)")
    ap.add_argument("--graph-steps", type=int, default=16, help="archc-decoder: decode steps per CUDA-graph replay")
    ap.add_argument("--kernel", default="default", help="--set attention.kernel=... for every family ('spec': keep the spec's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="benchmarks/standard.py TINY shapes (CPU orchestration check)")
    args = ap.parse_args(argv)
    import torch

    import archc
    from archc.bench.harness import environment, measure_limits
    from benchmarks.standard import load_family

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(rec):
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    limits = measure_limits(args.device, dtypes=("bf16",)) if device.type == "cuda" else measure_limits("cpu", dtypes=("fp32",))
    emit({"kind": "environment", **environment(), "limits": limits, "args": vars(args)})
    gemm = list(limits["gemm_flops_per_s"].values())[0]
    signal.signal(signal.SIGALRM, _alarm)
    cases = [c for c in args.cases.split(",") if c]
    extra = [] if args.kernel == "spec" else [f"attention.kernel={args.kernel}"]
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    decode_dtypes = [d for d in args.decode_dtypes.split(",") if d] if device.type == "cuda" else ["fp32"]
    start = time.perf_counter()
    records = []
    for fam in [f for f in args.families.split(",") if f]:
        spec = load_family(fam, tiny=args.tiny, extra=extra)
        graph = archc.compile(spec)
        from archc.bench.hf import hf_equivalent

        has_hf = not isinstance(hf_equivalent(graph), str)
        runs = [(c, None) for c in cases if c in TRAIN_CASES] + [(c, d) for d in decode_dtypes for c in cases if c in DECODE_CASES]
        for case, dname in runs:
            if case.startswith("hf") and not has_hf:
                emit({"kind": "skip", "family": fam, "case": case, "reason": "no transformers class computes this spec"})
                continue
            if args.deadline_s and time.perf_counter() - start > args.deadline_s:
                emit({"kind": "skip", "family": fam, "case": case, "dtype": dname, "reason": f"--deadline-s {args.deadline_s} passed"})
                continue
            rec = {"kind": "train" if case in TRAIN_CASES else "decode", "family": fam, "spec": spec.name, "case": case}
            if dname:
                rec["dtype"] = dname
            torch._dynamo.reset()
            signal.alarm(args.cap_s)
            t0 = time.perf_counter()
            try:
                if case in TRAIN_CASES:
                    r = train_case(case, graph, device, dtype, args.batch, args.seq, args.steps, args.warmup)
                    r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / gemm
                else:
                    r = decode_case(case, graph, device, dtypes[dname], args.prompt, args.new, args.repeats, args.graph_steps)
                rec.update(r, ok=True)
            except BaseException as e:  # noqa: BLE001 - one case's failure (OOM, compile error, cap) must not end the table
                if isinstance(e, KeyboardInterrupt):
                    raise
                rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}", trace=traceback.format_exc()[-1500:])
            finally:
                signal.alarm(0)
            rec["case_s"] = time.perf_counter() - t0
            emit(rec)
            records.append(rec)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for dname in decode_dtypes:
            if any(r.get("dtype") == dname for r in records):
                emit(decode_summary([r for r in records if r["family"] == fam], dname))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
