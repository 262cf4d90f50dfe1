"""CPU plumbing of the issue-14 probes (their figures come from the GPU; these keep the scripts honest):
- splitk_probe's split-K graph computes the same product as the plain MatMul (the reshape of the row and
  of the stored weight must line up K), checked against numpy, with a mis-split negative control;
- host_prefill runs end to end on a tiny spec with --device cpu and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from benchmarks import splitk_probe

ROOT = Path(__file__).resolve().parents[2]


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_splitk_graph_is_the_same_product():
    K, N, copies = 64, 24, 2
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float16)
    plain = splitk_probe.model(K, N, 1, copies, seed=1)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in plain.graph.initializer}
    want = [x.astype(np.float32) @ weights[f"w{i}"] for i in range(copies)]
    scale = max(float(np.abs(w).max()) for w in want)
    for s in (1, 2, 4):
        got = _run(splitk_probe.model(K, N, s, copies, seed=1), x)
        for g, w in zip(got, want, strict=True):
            assert np.abs(g.astype(np.float32) - w).max() <= 1e-2 * scale, s
    # negative control: the row's K/s-blocks in the other order is a different product (the check can fail)
    swapped = np.ascontiguousarray(np.concatenate([x[:, K // 2:], x[:, :K // 2]], 1))
    got = _run(splitk_probe.model(K, N, 2, copies, seed=1), swapped)[0].astype(np.float32)
    assert np.abs(got - want[0]).max() > 0.1 * scale


def test_host_prefill_dry_run(tmp_path):
    tiny = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "mlp.d_ff=128", "vocab_size=100"]
    cmd = [sys.executable, "-m", "benchmarks.host_prefill", "--device", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
           "--shapes", "1x8,2x8", "--runs", "2"] + [a for s in tiny for a in ("--set", s)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "host_prefill.json").read_text())
    assert set(res["shapes"]) == {"1x8", "2x8"}
    for v in res["shapes"].values():
        assert set(v) == {"kept", "rebound", "check_prompts", "left_pad", "check_loop_before"} and all(t > 0 for t in v.values())
