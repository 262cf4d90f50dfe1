"""The standard-set runner's orchestration on the CPU at tiny size (benchmarks/run_standard.py --tiny):
every case lands in one JSON with one set of limits, a child that dies is recorded and the run goes
on (negative control by injected abort), a hung child is killed, --plan stays light, the torch
backend's last-position head, and the renderer. No speed assertions (speed lives in benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archc
from archc.bench.harness import Bench, Shape

from benchmarks import render_results, standard

ROOT = Path(__file__).resolve().parents[2]

FAMILIES = list(standard.FAMILIES)
TINY_CASES = {f"{f}:{d}:{b}:{p}" for f in FAMILIES for d in ("fp16", "bf16") for b in (1, 2) for p in (8, 12)}


def _run(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.run_standard", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny CPU run of every family (ort + torch, the backends without transformers' start-up cost),
    with PaLM's child made to abort before its second case."""
    d = tmp_path_factory.mktemp("standard")
    p = _run(["--tiny", "--device", "cpu", "--backends", "ort,torch", "--repeats", "1", "--baseline-repeats", "1",
              "--no-pre-export", "--out", str(d / "results.json")], env={"ARCHC_BENCH_CRASH": "palm:fp16:1:12"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((d / "results.json").read_text()), d, p.stdout


def test_tiny_run_records_every_case_and_one_set_of_limits(tiny_run):
    rep, d, _ = tiny_run
    measured = [r["case"] for r in rep["runs"]]
    failed = [c["key"] for c in rep["failed"]]
    skipped = [c["key"] for c in rep["skipped"]]
    assert sorted(measured + failed + skipped) == sorted(TINY_CASES)  # each case once, in one of the three
    assert all(k.split(":")[1] == "bf16" for k in skipped) and len(skipped) == 20
    assert all("bf16" in c["reason"] for c in rep["skipped"])
    lim = rep["limits"]
    assert lim["copy_bytes_per_s"] > 0 and lim["gemm_flops_per_s"]["fp32"] > 0
    assert rep["environment"]["torch"] == torch.__version__
    assert rep["state"]["finished"] and rep["state"]["groups_done"] == 5
    for run in rep["runs"]:
        by = {b["backend"]: b for b in run["backends"]}
        # --backends ort,torch: the families whose alternative is an HF backend keep ort alone
        torch_too = run["family"] in ("palm", "glm") or (run["family"] == "llama" and run["batch"] == 1)
        assert set(by) == ({"ort", "torch"} if torch_too else {"ort"}), run["case"]
        assert run["dtype"] == "fp32" and run["requested_dtype"] == "fp16"
        assert all(b["prefill_ms"] > 0 for b in by.values()) and run["roofline"]["decode_tok_s"] > 0
        if "torch" in by and run["family"] != "glm":  # the runner gives GLM's generated tokens block positions; the torch loop does not
            assert by["torch"]["tokens_agree"] == 4, run["case"]  # fp32, same weights: the same greedy tokens
    assert not (d / ".results.json.parts").exists() and not list(d.glob(".*.tmp"))
    assert not (d / ".results.json.exports").exists()  # the run's fresh export folder, removed at the end


def test_crashed_child_is_recorded_and_the_run_goes_on(tiny_run):
    """Negative control: PaLM's child aborts (as a CUDA fault would kill it) before its second case;
    that case is recorded as failed with the reason, the group's other cases run in a fresh process,
    and the groups after it run."""
    rep, _, out = tiny_run
    groups = {g["family"]: g for g in rep["groups"]}
    assert groups["palm"]["status"] == "failed" and "SIGABRT" in groups["palm"]["reason"] and groups["palm"]["processes"] == 2
    assert [c["key"] for c in rep["failed"]] == ["palm:fp16:1:12"]
    assert "SIGABRT" in rep["failed"][0]["reason"] and "aborting at palm:fp16:1:12" in rep["failed"][0]["reason"]
    palm = [r["case"] for r in rep["runs"] if r["family"] == "palm"]
    assert palm == ["palm:fp16:1:8", "palm:fp16:2:8", "palm:fp16:2:12"]  # before the abort (kept) and after it
    for fam in ("llama", "bloom", "gpt2", "glm"):  # groups before and after the crash
        assert groups[fam]["status"] == "ok" and groups[fam]["processes"] == 1
        assert sum(r["family"] == fam for r in rep["runs"]) == 4
    assert "child failed on palm:fp16:1:12" in out


def test_hung_group_is_killed_at_its_timeout(tmp_path):
    p = _run(["--tiny", "--device", "cpu", "--families", "gpt2", "--dtypes", "fp16", "--batches", "1", "--prompts", "8",
              "--backends", "ort", "--group-timeout-s", "0.5", "--no-pre-export", "--out", str(tmp_path / "r.json"),
              "--work-dir", str(tmp_path / "work")], timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["runs"] == [] and [c["key"] for c in rep["failed"]] == ["gpt2:fp16:1:8"]
    assert "timed out after" in rep["failed"][0]["reason"] and rep["state"]["finished"]


def test_detached_run_survives_and_status_reports_it(tmp_path):
    """--detach starts the run in its own session and returns; --status waits for it and says 'finished'.
    A CUDA fault recorded in the first case (injected) ends that child; the second case runs in a fresh one."""
    out = tmp_path / "r.json"
    common = ["--tiny", "--device", "cpu", "--families", "llama", "--dtypes", "fp16", "--batches", "1", "--prompts", "8,12",
              "--backends", "ort", "--repeats", "1", "--out", str(out)]
    p = _run([*common, "--detach"], env={"ARCHC_BENCH_FAULT": "llama:fp16:1:8"}, timeout=60)
    assert p.returncode == 0 and "started pid" in p.stdout, p.stderr
    p = _run([*common, "--status", "--wait-s", "90"], timeout=120)
    assert p.returncode == 0 and "finished: 1/1 groups" in p.stdout, p.stdout + p.stderr
    rep = json.loads(out.read_text())
    assert [r["case"] for r in rep["runs"]] == ["llama:fp16:1:8", "llama:fp16:1:12"] and rep["failed"] == []
    assert "illegal memory access" in rep["runs"][0]["backends"][0]["error"] and "illegal" not in (rep["runs"][1]["backends"][0]["error"] or "")
    g = rep["groups"][0]
    assert g["processes"] == 2 and g["status"] == "failed" and "CUDA fault in ort at llama:fp16:1:8" in g["reason"]
    log = (tmp_path / "r.json.log").read_text()
    assert "done in" in log
    # the model was exported ahead by the CPU process, into the folder the group's ort backend reads
    assert "[export] exported llama-tiny-portable-fp32" in log and "  exported llama-tiny" not in log


def test_plan_lists_every_case_without_importing_torch():
    code = ("import runpy, sys\n"
            "sys.argv = ['run_standard', '--plan']\n"
            "try:\n    runpy.run_module('benchmarks.run_standard', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout
    lines = {ln.split()[0]: ln.split(None, 1)[1] for ln in p.stdout.splitlines() if ln.startswith("  ")}
    every = {f"{f}:{d}:{b}:{pr}" for f in FAMILIES for d in ("fp16", "bf16") for b in (1, 16) for pr in (512, 2048)}
    assert set(lines) == every and "40 cases in 10 groups" in p.stdout
    assert lines["llama:fp16:1:512"].split(", ") == ["ort", "ort-nograph", "torch", "hf-eager", "hf-sdpa", "hf-compile"]
    assert lines["llama:fp16:16:2048"] == "ort, hf-sdpa" and lines["bloom:bf16:1:512"] == "ort, hf-eager"
    assert lines["bloom:bf16:16:512"] == "ort"  # bf16 baselines at batch 1 only
    assert lines["palm:fp16:16:2048"] == "ort, torch" and lines["gpt2:fp16:1:512"] == "ort, hf-sdpa"


def test_bad_option_is_one_line(tmp_path):
    p = _run(["--families", "llama,falcon", "--plan"], timeout=60)
    assert p.returncode == 2 and "unknown falcon" in p.stderr and "Traceback" not in p.stderr


def test_torch_backend_head_on_last_position(monkeypatch):
    """The torch backend's prefill head sees one position (as the ort backend's generation, logits_start
    = -1), and generates the same tokens as the module fed logits_start = 0, whose head sees the whole prompt."""
    graph = archc.compile(standard.load_family("palm", tiny=True))
    seen: list[int] = []
    b = Bench(graph, dtype="fp32", device="cpu", backends=["torch"], repeats=1, prefill_repeats=1,
              limits={"copy_bytes_per_s": 1e10, "gemm_flops_per_s": {"fp32": 1e11}})
    run = b.run(Shape(2, 9, 3))
    backend = b._backends["torch"]
    head = backend.model.get_submodule("head")
    hook = head.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["x"].shape[1]), with_kwargs=True)
    last_tokens = backend.generate(*b.inputs(Shape(2, 9, 3)), 2)
    assert seen == [1, 1] and run["backends"][0]["prefill_ms"] > 0
    # negative control: the module called without the backend's logits_start (the recorder sees what the head gets)
    seen.clear()
    backend.fn = lambda *a, logits_start=0, **kw: backend.model(*a, **kw)
    full_tokens = backend.generate(*b.inputs(Shape(2, 9, 3)), 2)
    backend.fn = backend.model
    hook.remove()
    assert seen == [9, 1]
    assert torch.equal(last_tokens, full_tokens)


def test_render_one_run_and_the_old_files(tiny_run, tmp_path):
    rep, d, _ = tiny_run
    text = render_results.render(render_results.merge([rep]))
    assert text.count("Limits measured once") == 1 and "Invocation started" not in text
    assert "**Failed**" in text and "palm fp16 batch 1 prompt 12: exit status" in text and "SIGABRT" in text
    assert "llama bf16 b1 p8 (bf16 on the CPU" in text
    assert text.count(" | ort | ") == 19  # every measured case's ort row
    doc = tmp_path / "R.md"
    doc.write_text(f"prose\n{render_results.BEGIN}\nold\n{render_results.END}\nmore prose\n")
    p = subprocess.run([sys.executable, "-m", "benchmarks.render_results", str(d / "results.json"), "--into", str(doc)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    out = doc.read_text()
    assert out.startswith("prose\n") and out.endswith("more prose\n") and "old" not in out and "Limits measured once" in out
    old = sorted((ROOT / "benchmarks" / "results").glob("tier*.json"))
    if old:  # the earlier multi-invocation files still render, one limits line per invocation
        text = render_results.render(render_results.merge([json.loads(p.read_text()) for p in old]))
        assert text.count("Invocation started") == len(old)
