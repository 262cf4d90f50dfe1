"""The spec commands: validate, show, schema, new (exit codes, output, atomic writes, light imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LIBRARY, ROOT, SPECS, cli_in_fresh_python
from conftest import run_cli as run


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---- validate ------------------------------------------------------------------------------------


def test_validate_library(capsys):
    files = [str(SPECS / f"{n}.yaml") for n in LIBRARY]
    rc, out, err = run(["validate", *files], capsys)
    assert rc == 0, err
    assert len(lines(out)) == len(files) and all(line.startswith("ok ") for line in lines(out))
    assert err == ""


def test_validate_library_names_and_set(capsys):
    rc, out, _ = run(["validate", "llama", "palm", "--set", "n_layers=2"], capsys)
    assert rc == 0 and "2 layers" in out


def test_validate_mixed(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvocab_size: 0\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    rc, out, err = run(["validate", str(SPECS / "gpt2.yaml"), str(bad), str(empty), str(tmp_path / "missing.yaml")], capsys)
    assert rc == 2
    assert len(lines(out)) == 1 and len(lines(err)) == 3
    assert all(line.startswith("invalid ") for line in lines(err))
    assert "vocab_size" in err and "empty file" in err and "no such file" in err


def test_validate_set_conflict(capsys):
    rc, _, err = run(["validate", "llama", "--set", "attention.kv_heads=5"], capsys)
    assert rc == 2 and "--set attention.kv_heads=5" in err and len(lines(err)) == 1


def test_validate_bad_set_syntax(capsys):
    rc, _, err = run(["validate", "llama", "--set", "n_layers"], capsys)
    assert rc == 2 and "FIELD=VALUE" in err


def test_validate_model_directory(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "spec.yaml").write_text((SPECS / "gpt2.yaml").read_text())
    (tmp_path / "n").mkdir()
    rc, out, err = run(["validate", str(tmp_path / "m"), str(tmp_path / "n")], capsys)
    assert rc == 2 and "gpt2-124m" in out and "no spec.yaml" in err


# ---- show ----------------------------------------------------------------------------------------


def test_show_llama(capsys):
    rc, out, err = run(["show", str(SPECS / "llama.yaml"), "--seq-len", "2048"], capsys)
    assert rc == 0, err
    # Independent arithmetic (LLaMA-7B: L 32, d 4096, ff 11008, V 32000, 32 KV heads of 128):
    L, d, ff, V, S = 32, 4096, 11008, 32000, 2048
    flops = 2 * (L * (4 * d * d + 3 * d * ff) + V * d) + L * 4 * d * S
    kv16 = 2 * L * 32 * 128 * 2
    for text in ("6,738,415,616", f"{flops:,}", f"{kv16:,} B", f"{2 * kv16:,} B", "head_dim 128", "rmsnorm",
                 "swiglu", "rope", "untied", "pre", "memory_efficient", "adamw", "cosine"):
        assert text in out, text
    for group in ("embedding", "attention", "mlp", "norm", "head"):
        assert group in out
    by_group = {"embedding": V * d, "head": V * d, "mlp": L * 3 * d * ff, "attention": L * 4 * d * d, "norm": (2 * L + 1) * d}
    for n in by_group.values():
        assert f"{n:,}" in out


def test_show_seq_len_changes_flops(capsys):
    _, a, _ = run(["show", "gpt2", "--seq-len", "1"], capsys)
    _, b, _ = run(["show", "gpt2", "--seq-len", "1024"], capsys)
    assert a != b and "seq len 1 " in a and "seq len 1024" in b


@pytest.mark.parametrize("name", LIBRARY)
def test_show_every_library_spec(name, capsys):
    rc, out, err = run(["show", name], capsys)
    assert rc == 0, err
    assert "KV cache, float16" in out and "KV cache, bfloat16" in out and "KV cache, float32" in out


def test_show_with_set_and_errors(tmp_path, capsys):
    rc, out, _ = run(["show", "palm", "--set", "n_layers=1", "--set", "vocab_size=10"], capsys)
    assert rc == 0 and "1 layers" in out
    rc, _, err = run(["show", str(tmp_path / "nope.yaml")], capsys)
    assert rc == 2 and len(lines(err)) == 1
    rc, _, err = run(["show", "llama", "--seq-len", "0"], capsys)
    assert rc == 2


# ---- schema --------------------------------------------------------------------------------------


def test_committed_schema_is_current(capsys):
    rc, out, _ = run(["schema"], capsys)
    assert rc == 0
    committed = (SPECS / "archc-spec.schema.json").read_text()
    assert out == committed, "run `archc schema -o specs/archc-spec.schema.json`"


def test_schema_to_file(tmp_path, capsys):
    target = tmp_path / "s.json"
    rc, out, _ = run(["schema", "-o", str(target)], capsys)
    assert rc == 0 and out == ""
    assert target.read_text() == (SPECS / "archc-spec.schema.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"], "no temporary file left behind"


def test_schema_validates_library_and_rejects_bad():
    import jsonschema  # a test dependency (pyproject [test])
    from archc.loader import read_yaml

    schema = json.loads((SPECS / "archc-spec.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for name in LIBRARY:
        data, _ = read_yaml(SPECS / f"{name}.yaml")
        assert list(v.iter_errors(data)) == [], name
    for bad in ({"name": "x"}, {"extends": "llama", "n_layers": 0}, {"extends": "llama", "vocab_sise": 3},
                {"extends": "llama", "position": {"kind": "alibi", "theta": 1.0}},
                {"extends": "llama", "attention": {"sharing": "some"}}):
        assert list(v.iter_errors(bad)), bad


# ---- new -----------------------------------------------------------------------------------------


def test_new_writes_a_valid_extending_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["new", "tiny-llama", "--from", "llama", "--set", "n_layers=2", "--set", "attention.kv_heads=8"], capsys)
    assert rc == 0, err
    text = (tmp_path / "tiny-llama.yaml").read_text()
    assert "extends: llama\n" in text and "name: tiny-llama\n" in text
    assert text.startswith("# yaml-language-server: $schema=")
    from archc.loader import load_spec

    spec = load_spec(tmp_path / "tiny-llama.yaml")
    assert (spec.name, spec.n_layers, spec.attention.kv_heads, spec.d_model) == ("tiny-llama", 2, 8, 4096)
    rc, out, _ = run(["validate", "tiny-llama.yaml"], capsys)
    assert rc == 0


def test_new_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "x.yaml"
    target.write_text("keep me\n")
    rc, _, err = run(["new", "x", "--from", "gpt2", "-o", str(target)], capsys)
    assert rc == 2 and "already exists" in err
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["new", "x", "--from", "nope"], "not a library spec"),
        (["new", "bad name", "--from", "llama"], "NAME"),
        (["new", "../x", "--from", "llama"], "NAME"),
        (["new", "x", "--from", "llama", "--set", "n_layers=-1"], "n_layers"),
        (["new", "x", "--from", "llama", "-o", "missing/dir/x.yaml"], "does not exist"),
    ],
)
def test_new_bad_input_writes_nothing(tmp_path, capsys, monkeypatch, argv, expect):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(argv, capsys)
    assert rc == 2 and expect in err and len(lines(err)) == 1
    assert list(tmp_path.iterdir()) == []


def test_new_from_a_spec_file(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("extends: gpt2\nname: base\nn_layers: 3\n")
    (tmp_path / "out").mkdir()
    rc, _, err = run(["new", "child", "--from", str(base), "-o", str(tmp_path / "out" / "child.yaml")], capsys)
    assert rc == 0, err
    text = (tmp_path / "out" / "child.yaml").read_text()
    assert "extends: ../base.yaml" in text
    from archc.loader import load_spec

    assert load_spec(tmp_path / "out" / "child.yaml").n_layers == 3


# ---- process-level behaviour ---------------------------------------------------------------------


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_light_commands_do_not_import_heavy_libraries(tmp_path):
    r = cli_in_fresh_python(["validate", "llama"], ["show", "gemma"], ["schema"], ["new", "n", "--from", "palm"],
                            ["validate", "nope.yaml"], cwd=tmp_path)
    assert r.heavy == [], r.stderr[-2000:]


def test_negative_control_heavy_import_is_detected(tmp_path):
    r = _python("import sys, torch; print('HEAVY', [m for m in sys.modules if m == 'torch'], file=sys.stderr)", tmp_path)
    assert "HEAVY ['torch']" in r.stderr


def test_exit_code_and_one_line_from_the_console_script_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\n")
    r = subprocess.run([sys.executable, "-m", "archc.cli", "validate", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 2
    assert len(lines(r.stderr)) == 1 and "Traceback" not in r.stderr and "not UTF-8" in r.stderr
    r = subprocess.run([sys.executable, "-m", "archc.cli", "show", "llama"], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 0 and "6,738,415,616" in r.stdout


def test_help_lists_spec_commands(capsys):
    rc, out, _ = run(["--help"], capsys)
    for cmd in ("validate", "show", "schema", "new"):
        assert cmd in out


def test_schema_output_errors(tmp_path, capsys):
    rc, _, err = run(["schema", "-o", str(tmp_path)], capsys)
    assert rc == 2 and "is a directory" in err
    rc, _, err = run(["schema", "-o", str(tmp_path / "no" / "s.json")], capsys)
    assert rc == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_written_files_have_ordinary_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        rc, _, _ = run(["new", "p", "--from", "gpt2", "-o", str(tmp_path / "p.yaml")], capsys)
        rc2, _, _ = run(["schema", "-o", str(tmp_path / "s.json")], capsys)
    finally:
        os.umask(old)
    assert rc == rc2 == 0
    assert (tmp_path / "p.yaml").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644


def test_negative_control_fresh_run_sees_heavy_imports(tmp_path):
    """cli_in_fresh_python reports a heavy import when a command makes one (compile loads onnx and torch)."""
    r = cli_in_fresh_python(["compile", "llama", "--set", "n_layers=1", "--set", "d_model=64", "--set", "attention.n_heads=4",
                             "--set", "vocab_size=64", "-o", tmp_path / "m"], cwd=tmp_path)
    assert r.codes == [0], r.stderr[-2000:]
    assert "onnx" in r.heavy and "torch" in r.heavy, r.heavy
