"""benchmarks/ort_ops_nbits_check.py (the int4 GPU check the lead runs) on the CPU: the same code at small sizes with the
CPU kernel, so a broken script is found here, not on the GPU machine. Its checks pass, its negative controls (high
nibble first, gate and up swapped) miss. Its refusal of a library without a CUDA kernel for --device cuda (one line) is
tests/ort_ops/test_ort_ops_check.py's test_cuda_refuses_a_library_without_cuda_kernel, run for both scripts."""

from __future__ import annotations

import functools
import json

from ort_ops_build import cpu_library, run_check_script

run = functools.partial(run_check_script, "ort_ops_nbits_check")


def test_cpu_smoke_run_passes(tmp_path):
    p = run("--device", "cpu", "--lib", str(cpu_library()), "--out", str(tmp_path / "d"), "--runs", "3", "--warmup", "1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads((tmp_path / "d" / "ort_ops_nbits_check.json").read_text())
    assert r["ok"] is True and {c["M"] for c in r["check"]} >= {1, 4, 16}
    assert all(c["status"] == "pass" and min(c["control_gate_up_swapped"], c["control_high_nibble_first"]) >= r["control_min"]
               for c in r["check"]), r["check"]
    assert {(t["variant"], t["M"]) for t in r["timing"]} == {(v, m) for v in ("matmulnbits", "archc_op") for m in (1, 16)}
    assert set(r["saving"]) == {"M1", "M16"}
