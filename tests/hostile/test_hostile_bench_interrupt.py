"""Ctrl-C and SIGTERM during `archc bench` (on the CPU) leave nothing new behind: no --work-dir folder the
run made, no half export in it, no partial --json, no `archc-bench-*` temporary directory; and an export
stopped after it was written but before it was sealed is not left as a keyless folder that every later
bench into that --work-dir refuses. (`archc generate-tp`: tests/hostile/test_hostile_generate_tp.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hostile_util import child

# the weights take a few seconds to export (about 70 MB), so a signal can land inside the export
SLOW = ["--set", "n_layers=8", "--set", "d_model=512", "--set", "attention.n_heads=8", "--set", "vocab_size=32000",
        "--set", "max_seq_len=64"]
TINY = ["n_layers=1", "d_model=32", "attention.n_heads=2", "mlp.d_ff=64", "vocab_size=50", "max_seq_len=32"]
# onnxruntime's telemetry writes `.ses` (a session id) into TMPDIR when it makes a session, and keeps it
# across runs; it is the library's, not archc's
NOT_ARCHC = {".ses"}


def _bench(tmp_path: Path, *extra) -> subprocess.Popen:
    (tmp_path / "tmp").mkdir()
    argv = ["bench", "llama", *SLOW, "--device", "cpu", "--dtype", "fp32", "--backends", "ort,torch", "--prompt-len", "4,8",
            "--new-tokens", "4", "--repeats", "2", "--json", tmp_path / "out" / "r.json", *extra]
    return child(argv, start=True, env={"TMPDIR": str(tmp_path / "tmp")})


def _wait_for(proc: subprocess.Popen, found, what: str) -> None:
    t0 = time.monotonic()
    while not found():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() - t0 < 120, f"never saw {what}"
        time.sleep(0.02)


def _stopped(proc: subprocess.Popen, sig) -> None:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode in (130, 143), (proc.returncode, err[-2000:])


def _left(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name not in NOT_ARCHC)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopped_during_the_export_into_a_new_work_dir(sig, tmp_path):
    """--work-dir wd/sub does not exist: the run makes it, then its export's hidden work directory; stopped
    there, neither wd nor wd/sub stays (was: both, empty), and no --json."""
    proc = _bench(tmp_path, "--work-dir", tmp_path / "wd" / "sub")
    _wait_for(proc, lambda: any(p.name.startswith(".archc.") for p in (tmp_path / "wd").rglob("*")), "the export's work directory")
    _stopped(proc, sig)
    assert _left(tmp_path) == ["tmp"]


@pytest.mark.slow
def test_stopped_while_measuring_with_a_temporary_work_dir(tmp_path):
    """After the export is sealed: the temporary archc-bench-* directory goes, and the --json is absent or
    whole (a run stopped between shapes keeps the shapes it finished, written atomically)."""
    proc = _bench(tmp_path)
    _wait_for(proc, lambda: list((tmp_path / "tmp").glob("archc-bench-*/*/archc-bench-key.json")), "the sealed export")
    _stopped(proc, signal.SIGINT)
    left = _left(tmp_path)
    assert left in (["tmp"], ["out", "out/r.json", "tmp"]), left
    if "out/r.json" in left:
        report = json.loads((tmp_path / "out" / "r.json").read_text())
        assert [r["prompt_len"] for r in report["runs"]] in ([4], [4, 8])


def _tiny_graph():
    import archc

    return archc.compile(archc.load_spec("llama", TINY))


def test_export_stopped_before_its_key_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C right after the export's files are complete, before the key: the folder is not left keyless
    (it was, and the next bench refused the --work-dir). Negative control: an export that ends normally is
    sealed and reused."""
    import exporters.onnx_export as ox
    from archc.bench.harness import ort_export

    real = ox.export

    def export_then_interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(ox, "export", export_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        ort_export(tmp_path, _tiny_graph(), "portable", "fp32", "all", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ox, "export", real)
    d, t = ort_export(tmp_path, _tiny_graph(), "portable", "fp32", "all", log=lambda m: None)
    assert t is not None and [p.name for p in tmp_path.iterdir()] == [d.name] and (d / "archc-bench-key.json").is_file()
    assert ort_export(tmp_path, _tiny_graph(), "portable", "fp32", "all", log=lambda m: None) == (d, None)


def test_seeded_checkpoint_stopped_before_its_tokenizer_leaves_nothing(tmp_path, monkeypatch):
    """genai's seeded checkpoint: weights written, stopped while its tokenizer is written: nothing stays
    (was: a keyless hf-seeded-* folder)."""
    from archc.bench import genai

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(genai, "write_placeholder_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        genai.seeded_hf_dir(_tiny_graph(), tmp_path, "fp32")
    assert list(tmp_path.iterdir()) == []


def test_refused_run_leaves_no_work_dir(tmp_path, capsys):
    """A run refused after loading (--prompt-len + --new-tokens past max_seq_len) made no --work-dir (was: an
    empty folder left behind)."""
    from hostile_util import in_process, refused

    sets = [a for s in TINY for a in ("--set", s)]
    refused(in_process(["bench", "llama", *sets, "--device", "cpu", "--dtype", "fp32", "--backends", "ort", "--prompt-len", "30",
                        "--new-tokens", "8", "--repeats", "1", "--work-dir", tmp_path / "wd" / "sub"], capsys), "max_seq_len 32")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, stem", [
    ("../escape/x", "_escape_x"),
    ("meta-llama/Llama-2", "meta-llama_Llama-2"),
    ("/abs", "_abs"),
    ("..", "model"),
    ("-rf", "rf"),
    ("a b\\nc\\u0000", "a_b_c_"),
    ("n" * 300, "n" * 64),
    ("llama-7b", "llama-7b"),  # negative control: an ordinary name is kept as it was
], ids=["parent-path", "slash", "absolute", "dotdot", "dash", "control", "long", "plain"])
def test_spec_name_cannot_leave_the_work_dir(name, stem, tmp_path):
    """The export folder is one plain name inside --work-dir whatever the spec's name (was: `../escape/x`
    exported to ../escape/, outside --work-dir; `a/b` made a subfolder; 300 characters failed)."""
    import archc
    from archc.bench.harness import ort_export

    work = tmp_path / "work"
    g = archc.compile(archc.load_spec("llama", TINY + [f'name="{name}"']))
    d, _ = ort_export(work, g, "portable", "fp32", "all", log=lambda m: None)
    assert d.parent == work and d.name.startswith(f"{stem}-portable-fp32-"), d
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and [p.name for p in work.iterdir()] == [d.name]
