"""`archc bench` removes the temporary export it made, and on the CPU prints no 'limits' (a single
torch copy and GEMM are not limits for multi-threaded decode kernels: they gave 'copy 0.01 TB/s'
and '% roofline 119')."""

from __future__ import annotations

import tempfile

import archc
from archc.bench.harness import Bench, Shape
from tests.conftest import run_cli

TINY = ["n_layers=1", "d_model=32", "attention.n_heads=2", "mlp.d_ff=64", "vocab_size=50", "max_seq_len=32", "dtype=float32"]


def test_bench_removes_its_temporary_work_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    b = Bench(archc.compile(archc.load_spec("llama", TINY)), dtype="fp32", device="cpu", backends=["ort"], repeats=1,
              prefill_repeats=1)
    assert b.work_dir.parent == tmp_path and b.work_dir.name.startswith("archc-bench-")
    b.run(Shape(1, 4, 3))
    assert any(b.work_dir.iterdir())  # the ONNX export went there
    b.close()
    assert not b.work_dir.exists()


def test_a_given_work_dir_is_kept(tmp_path):
    keep = tmp_path / "keep"
    b = Bench(archc.compile(archc.load_spec("llama", TINY)), dtype="fp32", device="cpu", backends=["ort"], repeats=1,
              prefill_repeats=1, work_dir=keep)
    b.run(Shape(1, 4, 3))
    b.close()
    assert keep.is_dir() and any(keep.iterdir())


def test_cli_bench_on_cpu_leaves_nothing_and_prints_no_limits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["bench", "llama", *[a for s in TINY for a in ("--set", s)], "--device", "cpu", "--dtype", "fp32",
            "--prompt-len", "4", "--new-tokens", "3", "--backends", "ort,torch", "--repeats", "1"]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert list(tmp_path.glob("archc-bench-*")) == []
    assert "TB/s" not in out and "limits: copy" not in out
    assert "no roofline on the CPU" in " ".join(out.split())
