"""Quantized exports against the fp32 export of a model trained by `archc train` (CPU): round-to-nearest
against `--quant-method search`, int4 symmetric / asymmetric / block 128.

    python -m benchmarks.quant_quality OUT_DIR [--d-model 256] [--d-ff 704] [--steps 300]

Trains a 2-layer llama (GQA 4/2 heads, vocab 97) on a learnable token stream (id = (7 i + i // 13) mod 97,
as tests/emit_onnx/test_quant_matmulnbits.py does), compiles it fp32 and quantized (portable target), and
compares prefill logits of 16 random-id rows and 16 rows of the training stream (32 positions each):
rms = sqrt(mean (a - ref)^2 / mean ref^2), max = max |a - ref| / max |ref|, kl = mean KL(fp32 || quantized)
per position, top1 = argmax agreement. Writes OUT_DIR/quality.json and prints one line per export.
OUT_DIR also gets tokens.bin, the training run (run/) and one model folder per export; existing ones
are replaced only with --force (the model folders only where archc wrote them, as `archc compile --force`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import outputs

VARIANTS = {
    "int4": ["--quant", "int4"],
    "int4-search": ["--quant", "int4", "--quant-method", "search"],
    "int4-asym": ["--quant", "int4", "--quant-scheme", "asymmetric"],
    "int4-asym-search": ["--quant", "int4", "--quant-scheme", "asymmetric", "--quant-method", "search"],
    "int4-b128": ["--quant", "int4", "--quant-block-size", "128"],
    "int4-b128-search": ["--quant", "int4", "--quant-block-size", "128", "--quant-method", "search"],
}


def cli(argv: list[str]) -> None:
    from archc.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    if rc:
        raise SystemExit(f"archc {' '.join(argv)}: exit {rc}")


def prefill_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    """float32 logits [B, S, vocab] of one prefill (empty cache) through archc's runner on the CPU."""
    from archc.runner import Session

    return np.asarray(Session(model_dir, device="cpu").forward(ids)[0], np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-ff", type=int, default=704)
    ap.add_argument("--steps", type=int, default=300)
    outputs.add_force(ap)
    args = ap.parse_args()
    root = args.out_dir
    variants = {k: v for k, v in VARIANTS.items() if "b128" not in k or args.d_model >= 128}  # block 128 needs K >= 128
    outputs.check_outputs(ap, args.force, ("OUT_DIR", root / "tokens.bin"), ("OUT_DIR", root / "quality.json"))
    outputs.check_folders(ap, args.force, "OUT_DIR", root / "run", *(root / name for name in ("fp32", *variants)))
    force = ["--force"] if args.force else []
    root.mkdir(parents=True, exist_ok=True)
    sets = ["n_layers=2", f"d_model={args.d_model}", "attention.n_heads=4", "attention.sharing=gqa", "attention.kv_heads=2",
            f"mlp.d_ff={args.d_ff}", "vocab_size=97", "max_seq_len=64", "training.schedule.warmup_steps=10",
            "training.optimizer.lr=3e-3"]
    stream = (np.arange(20000) * 7 + np.arange(20000) // 13) % 97
    stream.astype("<u2").tofile(root / "tokens.bin")
    cli(["train", "llama", *[a for s in sets for a in ("--set", s)], "--data", str(root / "tokens.bin"), "--out", str(root / "run"),
         "--batch", "8", "--seq-len", "32", "--steps", str(args.steps), "--eval-every", "0", "--device", "cpu", *force])
    for name, extra in {"fp32": [], **variants}.items():
        cli(["compile", str(root / "run"), "-o", str(root / name), *force, *extra])
    rng = np.random.default_rng(0)
    rows = {"random": rng.integers(0, 97, (16, 32)).astype(np.int64),
            "stream": np.stack([stream[s:s + 32] for s in rng.integers(0, 19000, 16)]).astype(np.int64)}
    ref = {k: prefill_logits(root / "fp32", x) for k, x in rows.items()}
    out: dict = {"d_model": args.d_model, "d_ff": args.d_ff, "steps": args.steps, "exports": {}}
    for name in variants:
        for k, x in rows.items():
            a, r = prefill_logits(root / name, x), ref[k]
            p, q = log_softmax(r), log_softmax(a)
            m = dict(rms=float(np.sqrt(((a - r) ** 2).mean() / (r ** 2).mean())), max=float(np.abs(a - r).max() / np.abs(r).max()),
                     kl=float((np.exp(p) * (p - q)).sum(-1).mean()), top1=float((a.argmax(-1) == r.argmax(-1)).mean()))
            out["exports"][f"{name}/{k}"] = m
            print(f"{name}/{k}", {a_: round(b_, 5) for a_, b_ in m.items()}, flush=True)
    (root / "quality.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
