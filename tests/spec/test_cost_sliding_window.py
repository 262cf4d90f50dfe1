"""FLOPs and KV-cache totals count a sliding window: a token attends to at most `window` positions.

Oracle: LLaMA-7B's numbers written out by hand (Kaplan et al. 2020's count: 2 FLOPs per weight of a
matrix product, plus 2 * 2 * n_heads * head_dim per attended position and layer)."""

from __future__ import annotations

import json

import archc
from archc.cost import cost
from archc.dtypes import DType
from tests.conftest import run_cli

L, H, HD, S = 32, 32, 128, 2048
MATMUL = 14_287_896_576 - L * 4 * H * HD * S  # LLaMA-7B's matrix-product FLOPs (2 per weight)


def test_flops_and_kv_with_a_window():
    full = cost(archc.compile(archc.load_spec("llama")))
    windowed = cost(archc.compile(archc.load_spec("llama", ["attention.sliding_window=256"])))
    assert full.flops_per_token(S) == MATMUL + L * 4 * H * HD * S == 14_287_896_576
    assert windowed.flops_per_token(S) == MATMUL + L * 4 * H * HD * 256 == 13_348_372_480  # "about 13.35"
    # below the window nothing changes
    assert windowed.flops_per_token(100) == full.flops_per_token(100)
    assert windowed.kv_bytes_at(S, DType.float16) == L * 2 * H * HD * 2 * 256
    assert full.kv_bytes_at(S, DType.float16) == L * 2 * H * HD * 2 * S
    assert windowed.kv_bytes_per_token(DType.float16) == full.kv_bytes_per_token(DType.float16)


def test_show_and_diff_report_the_window(capsys):
    rc, out, _ = run_cli(["show", "llama", "--set", "attention.sliding_window=256"], capsys)
    assert rc == 0
    assert "13,348,372,480" in out and "14,287,896,576" not in out
    assert "128 MiB at 2048 tokens" in out
    rc, out, _ = run_cli(["diff", "llama", "llama", "--set-b", "attention.sliding_window=256", "--format", "json"], capsys)
    rows = {r["metric"]: r for r in json.loads(out)["cost"]["rows"]}
    assert rows["flops_per_token"]["a"] == 14_287_896_576
    assert rows["flops_per_token"]["b"] == 13_348_372_480
