"""Why greedy prefill of the emitted module peaks where it does: peak bytes of one prefill forward
(no_grad, an attention_mask passed as greedy_generate passes it) with and without the head's
logits, per attention kernel setting, and whether SDPA's memory-efficient kernel alone accepts the call.

Run: python -m benchmarks.prefill_probe --out probe.json
"""

from __future__ import annotations

import argparse
import json
import warnings

from benchmarks import outputs

CASES = [  # (family, extra --set, batch, prompt)
    ("llama", [], 8, 2016),
    ("llama", ["attention.kernel=default"], 8, 2016),
    ("llama", [], 4, 992),
    ("llama", [], 2, 4064),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out), make_folder=False)
    import torch

    import archc
    from benchmarks.standard import load_family
    from exporters.torch_module import GraphModel

    rows = []
    for family, extra, b, p in CASES:
        spec = load_family(family, extra=extra)
        graph = archc.compile(spec)
        with torch.device("meta"):
            model = GraphModel(graph).to(torch.bfloat16)
        model.to_empty(device="cuda")
        with torch.no_grad():
            for name, prm in model.named_parameters():
                prm.fill_(1.0) if prm.dim() == 1 and "norm" in name else prm.normal_(0.0, 0.02)
        model.eval()
        ids = torch.randint(0, spec.vocab_size, (b, p), device="cuda")
        mask = torch.ones(b, p, dtype=torch.long, device="cuda")
        row = {"spec": spec.name, "extra": extra, "batch": b, "prompt": p}
        base = torch.cuda.memory_allocated()
        for what, kw in (("forward", {}), ("hidden_only", {"return_hidden": True})):
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                model(ids, mask, **kw)
            torch.cuda.synchronize()
            row[f"{what}_peak_over_weights"] = torch.cuda.max_memory_allocated() - base
        # does the memory-efficient kernel alone take this layer's call?
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attn = model.get_submodule("layers.0.attn")
        h = torch.randn(b, p, spec.d_model, device="cuda", dtype=torch.bfloat16)
        m4 = torch.zeros(b, 1, p, p, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(b, attn.n_heads, p, attn.head_dim, device="cuda", dtype=torch.bfloat16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]), torch.no_grad():
                    torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=m4)
                row["efficient_alone"] = "ok"
            except RuntimeError as e:
                row["efficient_alone"] = str(e).splitlines()[0][:200]
        row["warnings"] = [str(w.message)[:300] for w in caught][:4]
        del model, h, q, m4
        torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
