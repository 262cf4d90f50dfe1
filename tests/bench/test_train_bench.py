"""benchmarks/train_bench.py's orchestration on the CPU at tiny size: a training line with its model
FLOPs (PaLM appendix B, recomputed here from the spec's shape), decode lines and the per-dtype summary
with the same-run ratio. No speed assertions (speed lives in benchmarks/)."""

from __future__ import annotations

import json

import archc
from benchmarks import train_bench
from benchmarks.standard import load_family


def test_train_and_decode_lines(tmp_path):
    out = tmp_path / "t.jsonl"
    rc = train_bench.main(["--tiny", "--device", "cpu", "--families", "llama", "--cases", "archc-eager,hf-sdpa-decode",
                           "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--prompt", "6", "--new", "4",
                           "--repeats", "1", "--out", str(out)])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    train = next(r for r in lines if r["kind"] == "train")
    assert train["ok"], train.get("error")
    spec = load_family("llama", tiny=True)
    d, L, H, hd, kv, ff, V = 64, 2, 4, 16, 2, 128, 97
    assert (spec.d_model, spec.n_layers, spec.vocab_size) == (d, L, V)
    n = L * (d * H * hd + 2 * d * kv * hd + H * hd * d + 3 * d * ff) + d * V  # q, k, v, o, gate/up/down, head
    assert train["flops_per_token"] == 6 * n + 12 * L * H * hd * 8
    decode = next(r for r in lines if r["kind"] == "decode")
    assert decode["ok"], decode.get("error")
    summary = next(r for r in lines if r["kind"] == "decode-summary")
    assert summary["dtype"] == "fp32" and "hf-sdpa-decode" in summary["cases"]
    assert "ratio" not in summary  # no archc-decoder line: nothing to compare (negative control)
    assert archc.compile(spec)  # the spec the bench ran compiles on its own
