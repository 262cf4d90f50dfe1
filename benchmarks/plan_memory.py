"""`archc plan`'s per-GPU figures against torch.cuda.max_memory_allocated on one GPU.

For each case the planner's figures come from archc.memory_plan (the same code as `archc plan`,
strategy single) and the measurement from running the emitted module on the device:

- training: weights in --dtype, the spec's optimizer (archc.training), GraphModel.loss, 3 steps
  (fwd, bwd, clip, step, zero_grad(set_to_none)); peak over the steps; also the bytes held after
  the forward of the last step beyond those held before it (the activations);
- generation: greedy decoding with the emitter's KV cache (prefill of the prompt, then new
  tokens up to --seq-len in total); peak over the whole call.

Run: python -m benchmarks.plan_memory --out results.json [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks import outputs

CASES = [
    # (name, family, extra --set, mode, batch, seq_len)
    ("llama-1.1b train b4x2048", "llama", [], "train", 4, 2048),
    ("palm-1.2b train b2x1024 (Adafactor, MQA)", "palm", [], "train", 2, 1024),
    ("llama-1.1b generate b8 to 2048", "llama", [], "generate", 8, 2048),
    ("bloom-1.3b generate b4 to 1024 (ALiBi)", "bloom", [], "generate", 4, 1024),
    ("llama-1.1b generate b4 to 1024", "llama", [], "generate", 4, 1024),
    ("llama-1.1b generate b2 to 4096", "llama", [], "generate", 2, 4096),
    ("llama-1.1b train b2x4096", "llama", [], "train", 2, 4096),
]
NEW_TOKENS = 32


def planned(spec, mode: str, batch: int, seq_len: int, dtype: str) -> dict:
    from archc.memory_plan import ParallelKind, Strategy, memory_row, one_layer_graph
    from archc.spec import DType

    row = memory_row(spec, one_layer_graph(spec), Strategy(ParallelKind.single, 1, 1), batch=batch, seq_len=seq_len,
                     dtype=DType(dtype), checkpointing=False)
    if mode == "train":
        return {"peak": row.train_peak, "weights": row.weights, "optimizer": row.optimizer, "activations": row.activations,
                "loss_transient": row.loss_transient}
    return {"peak": row.infer_peak, "weights": row.weights, "kv_cache": row.kv_cache, "prefill": row.prefill_transient}


def measure(spec, mode: str, batch: int, seq_len: int, dtype: str, device: str) -> dict:
    import torch

    import archc
    from archc.training import build_optimizer, build_scheduler, clip_gradients

    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    graph = archc.compile(spec)
    torch.cuda.empty_cache() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    # Random weights drawn on the device (the seeded init draws 1.1 B numbers on the host: slow, and
    # memory does not depend on the values); norm scales 1 so activations stay finite.
    from exporters.torch_module import GraphModel

    with torch.device("meta"):
        model = GraphModel(graph).to(dt)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if p.dim() == 1 and "norm" in name else p.normal_(0.0, 0.02)
    out: dict = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    if mode == "train":
        model.train()
        opt = build_optimizer(graph, model)
        sched = build_scheduler(graph, opt)
        tokens = torch.randint(0, spec.vocab_size, (batch, seq_len + 1), generator=g).to(device)
        t0 = time.perf_counter()
        for _ in range(3):
            before = torch.cuda.memory_allocated() if device == "cuda" else 0
            loss = model.loss(tokens[:, :-1], tokens[:, 1:])
            after = torch.cuda.memory_allocated() if device == "cuda" else 0
            loss.backward()
            clip_gradients(graph, model)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        out["activations"] = after - before
        out["seconds"] = time.perf_counter() - t0
    else:
        from archc.parallel.generate import _OnDevice
        from exporters.torch_module import greedy_generate

        model.eval()
        prompts = torch.randint(0, spec.vocab_size, (batch, seq_len - NEW_TOKENS), generator=g).tolist()
        t0 = time.perf_counter()
        greedy_generate(_OnDevice(model, device), graph, prompts, NEW_TOKENS)
        out["seconds"] = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
        out["peak"] = torch.cuda.max_memory_allocated() - base
    del model
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU dry run of the harness)")
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out), make_folder=False)
    import torch

    from benchmarks.standard import load_family

    rows = []
    for name, family, extra, mode, batch, seq_len in CASES:
        if args.tiny:
            batch, seq_len = 2, 48
        spec = load_family(family, tiny=args.tiny, extra=list(extra))
        row = {"case": name, "spec": spec.name, "mode": mode, "batch": batch, "seq_len": seq_len, "dtype": args.dtype,
               "plan": planned(spec, mode, batch, seq_len, args.dtype)}
        try:
            row["measured"] = measure(spec, mode, batch, seq_len, args.dtype, args.device)
        except Exception as e:  # noqa: BLE001 - recorded, the next case still runs
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if "peak" in row.get("measured", {}):
            row["plan_over_measured"] = row["plan"]["peak"] / row["measured"]["peak"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    with open(args.out, "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
