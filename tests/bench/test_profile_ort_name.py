"""benchmarks/profile_ort's summary file name says the export it measured: a quantized run (--quant, --quant-head)
and an unquantized one of the same family write different files, so neither needs --force to keep the other.
Before, both wrote profile_FAMILY.json (the second refused without --force, or replacing the first with it)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

from benchmarks.profile_ort import summary_name

ROOT = Path(__file__).resolve().parents[2]
TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "mlp.d_ff=128", "vocab_size=100"]


def test_names_spell_every_choice():
    assert summary_name("llama", None, None, False) == "profile_llama.json"  # the unquantized name as it was
    assert summary_name("llama", "two_gemms", None, False) == "profile_llama_two_gemms.json"
    assert summary_name("llama", None, "int4", False) == "profile_llama_int4.json"
    assert summary_name("llama", None, "int8", True) == "profile_llama_int8_head.json"
    assert summary_name("gpt2", "one_gemm", "int4", True) == "profile_gpt2_one_gemm_int4_head.json"
    combos = [(g, q, h) for g, q, h in product([None, "one_gemm", "two_gemms"], [None, "int4", "int8"], [False, True])
              if q or not h]  # --quant-head alone is refused (below)
    assert len({summary_name("llama", *c) for c in combos}) == len(combos)
    assert summary_name("llama", None, "int4", True, "archc") == "profile_llama_int4_head_archc.json"
    assert summary_name("llama", None, None, False, "onnxruntime") == "profile_llama.json"


def test_kernels_archc_needs_the_cuda_device(tmp_path):
    """archc's ops are for the cuda target: a CPU dry run asking for them is one line, exit 2, before any export."""
    p = _run(["--out", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--kernels", "archc"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--kernels archc needs --device cuda" in p.stderr, p.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "d").exists()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.profile_ort", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_a_quantized_run_keeps_the_unquantized_summary(tmp_path):
    """CPU dry run (tiny --set): an unquantized run's profile_llama.json is there; --quant int4 runs without --force,
    writes profile_llama_int4.json and leaves the other file as it was. Negative control: a second --quant int4 run
    is refused, naming the int4 file (the name is the one main() checks and writes)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "profile_llama.json").write_text("the unquantized run's summary\n")
    argv = ["--out", str(d), "--work-dir", str(tmp_path / "w"), "--device", "cpu", "--quant", "int4", "--prompt", "8",
            "--steps", "2", *[a for s in TINY for a in ("--set", s)]]
    p = _run(argv)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (d / "profile_llama.json").read_text() == "the unquantized run's summary\n"
    assert json.loads((d / "profile_llama_int4.json").read_text())["decode_steps"] == 2
    p = _run(argv)
    assert p.returncode == 2 and f"--out {d / 'profile_llama_int4.json'}: exists; add --force" in p.stderr, p.stderr


def test_quant_head_alone_is_refused(tmp_path):
    """--quant-head without --quant would measure an unquantized export under a name that says nothing of it."""
    p = _run(["--out", str(tmp_path / "d"), "--device", "cpu", "--quant-head"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == ["profile_ort.py: --quant-head quantizes the head of a --quant export; "
                                             "add --quant int4 or --quant int8"]
    assert not (tmp_path / "d").exists()


def test_runs_with_other_sets_do_not_share_an_export(tmp_path):
    """Two CPU dry runs differing only in --set n_layers (the spec's name stays llama-1.1b) each measure their own
    export: two folders in --work-dir, each holding the spec of its run (spec.yaml, written by the exporter: the
    independent record of what was exported). Before, both used llama-1.1b-portable-fp16 and the second run
    measured the first run's 2-layer model. Negative control: the first call again reuses its folder (no export)."""
    w = tmp_path / "w"

    def run(layers: int, out: str) -> subprocess.CompletedProcess:
        sets = TINY + [f"n_layers={layers}"]
        p = _run(["--out", str(tmp_path / out), "--work-dir", str(w), "--device", "cpu", "--prompt", "4", "--steps", "2",
                  *[a for s in sets for a in ("--set", s)]])
        assert p.returncode == 0, p.stderr[-2000:]
        return p

    first = run(2, "a")
    second = run(1, "b")
    assert "exported" in first.stdout and "exported" in second.stdout, second.stdout
    folders = sorted(d for d in w.iterdir() if not d.name.startswith("."))
    assert len(folders) == 2, folders
    import yaml

    used = {json.loads((tmp_path / o / "profile_llama.json").read_text())["model_dir"] for o in ("a", "b")}
    assert used == {str(d) for d in folders}
    layers = {yaml.safe_load((d / "spec.yaml").read_text())["n_layers"] for d in folders}
    assert layers == {1, 2}
    again = run(2, "c")
    assert "exported" not in again.stdout
    assert json.loads((tmp_path / "c" / "profile_llama.json").read_text())["model_dir"] == \
        json.loads((tmp_path / "a" / "profile_llama.json").read_text())["model_dir"]
    assert len([d for d in w.iterdir() if not d.name.startswith(".")]) == 2
