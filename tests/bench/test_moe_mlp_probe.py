"""benchmarks/moe_mlp_probe.py on CPU: every variant (the current MLP forms and the one-expert MoE / QMoE ops)
matches the numpy reference written from the formula, and the negative controls (gate and up swapped, gate|up
concatenated where the MoE ops read them interleaved) fail that same check, so a wrong layout cannot pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import moe_mlp_probe as probe

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_check_passes_and_controls_are_caught(tmp_path):
    out = tmp_path / "m.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks.moe_mlp_probe", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["ok"] is True
    rows = {(c["variant"], c["dtype"]): c for c in r["check"]}
    assert set(rows) == {(v, d) for v in probe.VARIANTS for d in ("float32", "float16")}
    assert all(c["status"] == "pass" and c["rel_error"] <= c["tol"] for c in rows.values()), rows
    controls = {(c["variant"], c["mistake"]): c for c in r["negative_controls"]}
    assert set(controls) == {(v, "swap") for v in probe.VARIANTS} | {(v, "concat") for v in probe.MOE_VARIANTS}
    assert all(c["status"] == "caught" and c["rel_error"] >= probe.CONTROL_MIN for c in controls.values()), controls
    timing = {t["variant"]: t for t in r["timing"]}  # the smoke run of the timing code, checked the same way
    assert set(timing) == set(probe.VARIANTS)
    assert all(t["status"] == "pass" and t["us_per_block"] > 0 and t["cuda_graph"] is False for t in timing.values()), timing
    assert r["nodes"]["fp16_moe"]["ops"] == {"Add": 1, "MoE": 1}
    assert r["nodes"]["int4_qmoe"]["ops"] == {"Add": 1, "QMoE": 1}


@pytest.mark.parametrize("variant", probe.VARIANTS)
@pytest.mark.parametrize("mistake", [None, "swap"])
def test_each_variant_and_its_swap_control_in_process(variant, mistake, tmp_path):
    """The same check in-process, one variant at a time, fp32: right layout within TOL, swapped gate/up far off."""
    blocks = probe.make_blocks(2, 64, 128, seed=3)
    qb = probe.quantize_blocks(blocks, "float32") if variant.startswith("int4") else None
    x = np.random.default_rng(4).standard_normal((1, 1, 64)).astype(np.float32)
    ref = probe.reference(x, blocks, qb, "float32")
    y = probe.run_cpu(probe.build_model(variant, blocks, qb, "float32", 1, mistake), x, tmp_path, variant)
    err = probe.rel_error(y, ref, x)
    if mistake is None:
        assert err <= probe.TOL["float32"], err
    else:
        assert err >= probe.CONTROL_MIN, err


def test_dequantize_oracle_inverts_archc_packing():
    """The numpy dequantizer the int4 reference uses agrees with archc's quantizer on a known grid: weights
    already on the symmetric grid (code - 8) * s come back exactly (the oracle is not the thing under test's echo)."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (8, 64)).astype(np.float32)
    codes[:, ::32] = 0  # each block's largest magnitude at code 0 (-8 s), as the symmetric grid puts it
    w = (codes - 8) * np.float32(0.25)
    packed, scales = probe.quantize(w, "float32")
    assert packed.shape == (8, 2, 16) and scales.shape == (8, 2)
    np.testing.assert_array_equal(probe.dequantize(packed, scales), w)


def test_bad_variant_is_one_line_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.moe_mlp_probe", "--out", str(tmp_path / "m.json"),
                        "--variants", "fp16_moe,nope"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--variants nope" in p.stderr, p.stderr
    assert not (tmp_path / "m.json").exists()
