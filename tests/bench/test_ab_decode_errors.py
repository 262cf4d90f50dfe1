"""benchmarks/ab_decode.py's bad input is one line on stderr and exit 2 before any variant runs, no --out written.
A --set the spec refuses was caught only in each variant's child process and recorded as an error row, so the
script printed rows and exited 0 (as if it had measured); a misspelt variant key was ignored, measuring the
default under the variant's name. The negative control runs one tiny CPU variant end to end: exit 0, one row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "mlp.d_ff=128", "vocab_size=100",
        "max_seq_len=64"]


def _run(t: Path, *argv: str, sets=TINY) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.ab_decode", "--device", "cpu", "--dtype", "fp32", "--work", str(t / "w"),
           "--out", str(t / "ab.json"), "--rounds", "1", "--prompt", "4", "--new-tokens", "2",
           *[a for s in sets for a in ("--set", s)], *argv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def _one_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stdout[-1000:], p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ab_decode.py: "), lines
    for n in needles:
        assert n in lines[0], lines[0]
    assert not p.stdout.strip(), p.stdout  # no result row
    return lines[0]


def test_a_refused_set_exits_2_without_rows(tmp_path):
    p = _run(tmp_path, "--variants", "new", sets=TINY + ["attention.n_heads=3"])
    _one_line(p, "--set ", "attention.n_heads=3")
    assert not (tmp_path / "ab.json").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("variants, says", [
    ("new:next_tokn=none", "unknown key 'next_tokn'"),
    ("new:gate_up_quant=bogus", "gate_up_quant='bogus'; choose one of one_gemm|two_gemms|qmoe"),
    ("new:sdpa_kernel=x", "sdpa_kernel takes a non-negative integer"),
    ("new:decode_window=0", "decode_window takes a positive integer"),
    ("new:sdpa_kernel=" + "9" * 5000, "sdpa_kernel takes a non-negative integer"),
    ("new:logits", "'logits' is not key=value"),
    ("new:quant=int4,quant=int8", "quant is given twice"),
    ("no/such/tree", "holds no archc/ tree"),
    (";", "no variant"),
    ("new;new:kernels=archc", "kernels=archc needs --device cuda, not --device cpu"),
])
def test_a_bad_variant_exits_2_before_any_run(tmp_path, variants, says):
    _one_line(_run(tmp_path, "--variants", variants), says)
    assert not (tmp_path / "ab.json").exists() and not (tmp_path / "w").exists()


def test_an_unknown_family_is_argparse_s_line(tmp_path):
    p = _run(tmp_path, "--family", "t5")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "invalid choice: 't5'" in p.stderr, p.stderr[-2000:]


def test_variant_values_match_the_exporters_enums():
    """ab_decode spells the values out (its parent imports no onnx); they must stay the exporters' own."""
    from archc.quant import QuantKind
    from benchmarks.ab_decode import VARIANT_KEYS
    from exporters.onnx_export import Kernels, Logits, NextToken
    from exporters.onnx_lowering_cuda import GateUp

    assert set(VARIANT_KEYS["logits"]) == {x.value for x in Logits}
    assert set(VARIANT_KEYS["next_token"]) == {x.value for x in NextToken}
    assert set(VARIANT_KEYS["kernels"]) == {x.value for x in Kernels}
    # GateUp.archc_op is chosen by kernels=archc (it needs the op library), never as a lowering constant
    assert set(VARIANT_KEYS["gate_up"]) == set(VARIANT_KEYS["gate_up_quant"]) == {x.value for x in GateUp} - {GateUp.archc_op.value}
    assert set(VARIANT_KEYS["quant"]) <= {x.value for x in QuantKind}


def test_a_good_variant_still_measures(tmp_path):
    """Negative control: the same call with a valid --set and variant runs and records one row, exit 0."""
    p = _run(tmp_path, "--variants", "new:next_token=none,cuda_graph=0")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "ab.json").read_text())["results"]
    assert len(rows) == 1 and "error" not in rows[0] and rows[0]["variant"] == "new:next_token=none,cuda_graph=0", rows


def test_runs_with_other_sets_do_not_share_an_export(tmp_path):
    """The export folder's name holds a key of the --set list (and the spec, the code): a run with n_layers=1 after one
    with n_layers=2 exports its own model (spec.yaml in each folder, the exporter's record, says which), where it
    reused the first run's folder. Negative control: the first call again reuses its folder."""
    import yaml

    def folder(t: Path, layers: int) -> Path:
        p = _run(t, "--variants", "new:cuda_graph=0", "--force", sets=TINY + [f"n_layers={layers}"])
        assert p.returncode == 0, p.stderr[-2000:]
        return Path(json.loads((t / "ab.json").read_text())["results"][0]["model_dir"])

    two, one = folder(tmp_path, 2), folder(tmp_path, 1)
    assert two != one and two.parent == one.parent == tmp_path / "w"
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted([two.name, one.name])
    assert yaml.safe_load((two / "spec.yaml").read_text())["n_layers"] == 2
    assert yaml.safe_load((one / "spec.yaml").read_text())["n_layers"] == 1
    assert folder(tmp_path, 2) == two and len(list((tmp_path / "w").iterdir())) == 2


def test_export_key_follows_the_op_library_sources_and_given_library(tmp_path, monkeypatch):
    """A kernels=archc export copies the op library into its folder, so an edited .cu (or another ARCHC_ORT_OPS_LIB)
    is another export; the key read .py files only, so the A/B run reused the folder holding the old library."""
    import archc
    import exporters
    from archc.loader import load_spec
    from benchmarks.ab_decode import _export_key
    from tests.conftest import SPECS

    for name, pkg in (("archc", archc), ("exporters", exporters)):
        (tmp_path / name / "ort_ops").mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("")
        monkeypatch.setattr(pkg, "__file__", str(tmp_path / name / "__init__.py"))
    cu = tmp_path / "exporters" / "ort_ops" / "k.cu"
    cu.write_text("// v1\n")
    monkeypatch.delenv("ARCHC_ORT_OPS_LIB", raising=False)
    spec = load_spec(SPECS / "llama.yaml")
    k1 = _export_key([], spec)
    assert _export_key([], spec) == k1  # the control: same inputs, same key
    (tmp_path / "exporters" / "ort_ops" / "notes.txt").write_text("not a source")
    assert _export_key([], spec) == k1  # only the sources count
    cu.write_text("// v2\n")
    k2 = _export_key([], spec)
    assert k2 != k1
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"one")
    monkeypatch.setenv("ARCHC_ORT_OPS_LIB", str(lib))
    k3 = _export_key([], spec)
    lib.write_bytes(b"two")
    assert len({k2, k3, _export_key([], spec)}) == 3
