"""`archc compile -o DIR` does not replace an existing model directory unless --force is given."""

from __future__ import annotations

from tests.conftest import run_cli

T = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "attention.n_heads=2", "--set", "mlp.d_ff=64",
     "--set", "vocab_size=50", "--set", "max_seq_len=32"]


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_compile_refuses_an_existing_model_dir_without_force(tmp_path, capsys):
    out = tmp_path / "m"
    rc, _, err = run_cli(["compile", "llama", *T, "-o", str(out)], capsys)
    assert rc == 0, err
    before = _snapshot(out)
    rc, stdout, err = run_cli(["compile", "gpt2", *T, "-o", str(out)], capsys)
    assert rc == 2 and stdout == ""
    assert "--force" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert _snapshot(out) == before  # untouched
    rc, _, err = run_cli(["compile", "gpt2", *T, "-o", str(out), "--force"], capsys)
    assert rc == 0, err
    assert _snapshot(out)["spec.yaml"] != before["spec.yaml"] and b"gpt2" in _snapshot(out)["spec.yaml"]


def test_an_empty_directory_needs_no_force(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    rc, _, err = run_cli(["compile", "llama", *T, "-o", str(out)], capsys)
    assert rc == 0, err
