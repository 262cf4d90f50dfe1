"""The benchmark scripts keep a user's file: an existing output is refused without --force (one line on
stderr naming the argument and the fix, exit 2) before any work, and nothing else is touched. With
--force the same call replaces the file, as every call did before (the negative control: the refused
path really is the script's output). Scripts that keep a file on purpose say so in their --help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "mlp.d_ff=128", "vocab_size=100"]

# module -> (argv given tmp folder t, the output file that call writes, the argument the refusal names).
# Every path of an argv lies in t, so "nothing else touched" is t's listing before and after.
CASES = {
    "ab_decode": (lambda t: ["--device", "cpu", "--work", str(t / "w"), "--out", str(t / "ab.json")], "ab.json", "--out"),
    "export_cpu": (lambda t: ["--json", str(t / "e.json")], "e.json", "--json"),
    "gemv_kernel_probe": (lambda t: ["--build-dir", str(t / "b"), "--out", str(t / "g.json")], "g.json", "--out"),
    "fused_gemv_probe": (lambda t: ["--build-dir", str(t / "b"), "--out", str(t / "g.json")], "g.json", "--out"),
    "gemv_layout": (lambda t: ["--out", str(t / "g.json")], "g.json", "--out"),
    "genai_compare": (lambda t: [str(t / "c.json"), "--tiny", "--device", "cpu", "--work-dir", str(t / "w")], "c.json", "OUT.json"),
    "genai_cuda_graph": (lambda t: [str(t / "c.json")], "c.json", "OUT_JSON"),
    "gpu_checks": (lambda t: ["--out", str(t / "d"), "--device", "cpu"], "d/gpu_checks.json", "--out"),
    "host_prefill": (lambda t: ["--out", str(t / "d"), "--work", str(t / "w"), "--device", "cpu"], "d/host_prefill.json", "--out"),
    "host_step": (lambda t: ["--out", str(t / "h.json"), "--work-dir", str(t / "w"), "--device", "cpu"], "h.json", "--out"),
    "moe_mlp_probe": (lambda t: ["--out", str(t / "m.json"), "--device", "cpu"], "m.json", "--out"),
    "ort_ops_check": (lambda t: ["--out", str(t / "d"), "--device", "cpu"], "d/ort_ops_check.json", "--out"),
    "ort_ops_nbits_check": (lambda t: ["--out", str(t / "d"), "--device", "cpu"], "d/ort_ops_nbits_check.json", "--out"),
    "nccl_world1": (lambda t: ["--out", str(t / "n.json"), "--device", "cpu"], "n.json", "--out"),
    "plan_memory": (lambda t: ["--out", str(t / "p.json"), "--tiny", "--device", "cpu"], "p.json", "--out"),
    "prefill_probe": (lambda t: ["--out", str(t / "p.json")], "p.json", "--out"),
    "prefill_vs_genai": (lambda t: ["--out", str(t / "d"), "--work", str(t / "w")], "d/prefill_vs_genai.json", "--out"),
    "profile_ort": (lambda t: ["--out", str(t / "d"), "--work-dir", str(t / "w"), "--device", "cpu"], "d/profile_llama.json", "--out"),
    "quant_quality": (lambda t: [str(t / "d"), "--steps", "1"], "d/quality.json", "OUT_DIR"),
    "quant_size": (lambda t: [str(t / "q.json"), "--skip-genai", "--layers", "1"], "q.json", "OUT_JSON"),
    "splitk_probe": (lambda t: ["--out", str(t / "d")], "d/splitk_probe.json", "--out"),
    "run_standard": (lambda t: ["--tiny", "--device", "cpu", "--out", str(t / "r.json")], "r.json", "--out"),
}
# Scripts with an output argument that keep what is there on purpose, and the words of their --help that say so
KEEPS = {"train_bench": "appends one line", "render_results": "replaced in place"}


def _run(module: str, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _listing(t: Path) -> dict[str, bytes]:
    return {str(p.relative_to(t)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(t.rglob("*"))}


@pytest.mark.parametrize("module", sorted(CASES))
def test_existing_output_is_refused_before_any_work(module, tmp_path):
    argv, rel, option = CASES[module]
    out = tmp_path / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("the user's file\n")
    before = _listing(tmp_path)
    p = _run(module, argv(tmp_path))
    assert p.returncode == 2, (p.returncode, p.stdout[-1000:], p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{option} {out}: exists; add --force" in lines[0], lines[0]
    assert _listing(tmp_path) == before  # the file as it was, no work folder or log made


def test_every_script_with_an_output_argument_is_covered():
    """A new script with an output argument must join CASES (or KEEPS, saying in its help why it keeps the file)."""
    pattern = re.compile(r'add_argument\(\s*"(--out|--json|--into|out|out_json|out_dir)"')
    with_output = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if pattern.search(p.read_text())}
    assert with_output == set(CASES) | set(KEEPS)
    for module in CASES:
        assert "--force" in _run(module, ["--help"]).stdout, module
    for module, words in KEEPS.items():
        text = " ".join(_run(module, ["--help"]).stdout.split())
        assert words in text and "[--force]" not in text, module


def test_gpu_checks_log_is_an_output_too(tmp_path):
    """Its log would otherwise mix runs: an existing gpu_checks.log alone is refused the same way."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gpu_checks.log").write_text("an earlier run\n")
    p = _run("gpu_checks", ["--out", str(tmp_path / "d"), "--device", "cpu"])
    assert p.returncode == 2 and f"--out {tmp_path / 'd' / 'gpu_checks.log'}: exists" in p.stderr, p.stderr
    assert (tmp_path / "d" / "gpu_checks.log").read_text() == "an earlier run\n"


def test_quant_quality_refuses_an_existing_model_folder(tmp_path):
    """Its folders go to `archc train --out` / `archc compile -o`: refused up front, not after the training."""
    (tmp_path / "d" / "int4").mkdir(parents=True)
    p = _run("quant_quality", [str(tmp_path / "d"), "--steps", "1"])
    assert p.returncode == 2 and f"OUT_DIR {tmp_path / 'd' / 'int4'}: exists; add --force" in p.stderr, p.stderr
    assert sorted(x.name for x in (tmp_path / "d").iterdir()) == ["int4"]


def test_run_standard_detach_keeps_the_file_and_status_reads_it(tmp_path):
    """--detach used to delete an existing --out before starting; --status only reads --out (never refused)."""
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"kind": "archc-standard-run", "state": None, "runs": [], "failed": []}))
    before = out.read_bytes()
    p = _run("run_standard", ["--tiny", "--device", "cpu", "--out", str(out), "--detach"])
    assert p.returncode == 2 and "exists; add --force" in p.stderr and "started pid" not in p.stdout, p.stdout + p.stderr
    assert out.read_bytes() == before and not (tmp_path / "r.json.log").exists()
    p = _run("run_standard", ["--tiny", "--device", "cpu", "--out", str(out), "--status"])
    assert "exists; add --force" not in p.stderr, p.stderr


def test_force_replaces_as_before(tmp_path):
    """Negative control: the refused path is the script's output: with --force the same call writes it (host_prefill's
    CPU dry run), as it did silently before the check."""
    out = tmp_path / "d" / "host_prefill.json"
    out.parent.mkdir()
    out.write_text("the user's file\n")
    argv = ["--out", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--device", "cpu", "--shapes", "1x8", "--runs", "2",
            *[a for s in TINY for a in ("--set", s)]]
    p = _run("host_prefill", argv)
    assert p.returncode == 2 and out.read_text() == "the user's file\n", p.stderr
    p = _run("host_prefill", [*argv, "--force"], timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert set(json.loads(out.read_text())["shapes"]) == {"1x8"}


RUN_STANDARD_ONE = ["--tiny", "--device", "cpu", "--families", "gpt2", "--dtypes", "fp16", "--batches", "1", "--prompts", "8",
                    "--backends", "ort", "--repeats", "1"]


@pytest.mark.parametrize("leftover, extra", [(".r.json.parts", []), (".r.json.exports", []), ("r.json.log", ["--detach"])])
def test_run_standard_refuses_what_it_would_replace_beside_out(tmp_path, leftover, extra):
    """Not only --out: the hidden folders a run clears at its start (a killed run's, or the user's) and, with --detach,
    OUT.log are refused without --force, by the same one line, before anything is started or removed."""
    p = tmp_path / leftover
    if leftover.endswith(".log"):
        p.write_text("an earlier run's log\n")
    else:
        p.mkdir()
        (p / "kept").write_text("x\n")
    before = _listing(tmp_path)
    r = _run("run_standard", [*RUN_STANDARD_ONE, "--out", str(tmp_path / "r.json"), *extra], timeout=60)
    assert r.returncode == 2 and "started pid" not in r.stdout, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"run_standard.py: --out {p}: exists; add --force to replace it, "
                                             "or choose another path"], r.stderr
    assert _listing(tmp_path) == before


def test_run_standard_checks_only_what_it_replaces(tmp_path):
    """Negative control: the refusals above are of the run's own outputs. With --work-dir the default .OUT.exports is
    not the run's (kept, not refused), OUT.log is not written without --detach (kept, not refused); a leftover
    .OUT.parts with --force is cleared as before and the run finishes."""
    (tmp_path / ".r.json.parts").mkdir()
    (tmp_path / ".r.json.parts" / "stale.json").write_text("{}\n")
    (tmp_path / ".r.json.exports").mkdir()
    (tmp_path / ".r.json.exports" / "mine").write_text("the user's\n")
    (tmp_path / "r.json.log").write_text("an earlier run's log\n")
    argv = [*RUN_STANDARD_ONE, "--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path / "w")]
    r = _run("run_standard", argv, timeout=60)
    assert r.returncode == 2 and f"--out {tmp_path / '.r.json.parts'}: exists" in r.stderr, r.stderr  # the only one named
    r = _run("run_standard", [*argv, "--force"], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(json.loads((tmp_path / "r.json").read_text())["runs"]) == 1
    assert not (tmp_path / ".r.json.parts").exists()
    assert (tmp_path / ".r.json.exports" / "mine").read_text() == "the user's\n"
    assert (tmp_path / "r.json.log").read_text() == "an earlier run's log\n"
