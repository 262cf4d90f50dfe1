"""benchmarks/ort_ops_check.py (the GPU check the lead runs) on the CPU: the same code at small sizes with the CPU
kernel, so a broken script is found here, not on the GPU machine. Its checks pass, its negative control (gate and up
swapped) misses, and a library without a CUDA kernel is refused for --device cuda in one line (by
benchmarks/ort_ops_nbits_check.py too)."""

from __future__ import annotations

import functools
import json

import pytest

from ort_ops_build import cpu_library, run_check_script

run = functools.partial(run_check_script, "ort_ops_check")


def test_cpu_smoke_run_passes(tmp_path):
    p = run("--device", "cpu", "--lib", str(cpu_library()), "--out", str(tmp_path / "d"), "--runs", "3", "--warmup", "1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads((tmp_path / "d" / "ort_ops_check.json").read_text())
    assert r["ok"] is True and {c["M"] for c in r["check"]} >= {1, 2, 4, 16}
    assert all(c["status"] == "pass" and c["control_gate_up_swapped"] >= r["control_min"] for c in r["check"]), r["check"]
    assert {(t["variant"], t["M"]) for t in r["timing"]} == {(v, m) for v in ("onnx", "archc_op") for m in (1, 16)}
    assert set(r["saving"]) == {"M1", "M16"}


@pytest.mark.parametrize("script", ["ort_ops_check", "ort_ops_nbits_check"])
def test_cuda_refuses_a_library_without_cuda_kernel(tmp_path, script):
    p = run_check_script(script, "--device", "cuda", "--lib", str(cpu_library()), "--out", str(tmp_path / "d"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "has no CUDA kernel" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "d" / f"{script}.json").exists()
