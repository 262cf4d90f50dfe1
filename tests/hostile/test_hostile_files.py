"""6.4 data loss through -o, and 6.8 paths: long names, symlink loops, extends depth, special files.

Rule under test (archc/files.py): never replace or delete an input, a special file or a file archc
did not write; ordinary -o FILE overwrite of a regular file stays."""

from __future__ import annotations

import json
import os
import stat

import pytest

from hostile_util import T, deadline, in_process, refused

CFG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
       "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("extends: llama\nname: mine\n")
    return p


# ---- -o onto an input ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    lambda s: ["diff", s, "llama", "-o", s],
    lambda s: ["compare", s, "llama", "-o", s],
    lambda s: ["draw", s, "-o", s, "--format", "dot"],
    lambda s: ["diff", "llama", s, "-o", s, "--format", "json"],
])
def test_output_onto_an_input_is_refused(argv, spec, capsys):
    before = spec.read_bytes()
    refused(in_process(argv(spec), capsys), "is an input of this command")
    assert spec.read_bytes() == before


def test_output_onto_an_extended_file_and_a_hard_link(tmp_path, spec, capsys):
    """Inputs are every file read (the extends chain) and are compared by inode, not by name."""
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    os.link(spec, tmp_path / "alias.yaml")
    before = spec.read_bytes()
    refused(in_process(["diff", tmp_path / "b.yaml", "llama", "-o", spec], capsys), "input")
    refused(in_process(["diff", tmp_path / "b.yaml", "llama", "-o", tmp_path / "alias.yaml", "--format", "json"], capsys), "input")
    assert spec.read_bytes() == before


def test_ordinary_overwrite_still_works(tmp_path, spec, capsys):
    """Negative control: -o onto an earlier output (a regular file, not an input) is overwritten."""
    out = tmp_path / "d.md"
    out.write_text("old")
    code, _, err = in_process(["diff", spec, "llama", "-o", out], capsys)
    assert code in (0, 1), err
    assert out.read_text() != "old"


def test_import_hf_onto_its_own_config(tmp_path, capsys):
    (tmp_path / "hf1").mkdir()
    cfg = tmp_path / "hf1" / "config.json"
    cfg.write_text(json.dumps(CFG))
    before = cfg.read_bytes()
    refused(in_process(["import-hf", tmp_path / "hf1", "-o", cfg], capsys), "input")
    assert cfg.read_bytes() == before


@pytest.mark.parametrize("special", ["fifo", "chardev"])
def test_special_file_at_output_is_not_replaced(special, tmp_path, capsys):
    """Never the machine's own /dev/null: code with this defect would replace it for everyone. A
    character device of our own (the null device's numbers, made with mknod) stands in for it."""
    path = tmp_path / "ff"
    if special == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError) as e:
            pytest.skip(f"cannot make a character device here ({e})")
    for argv in (["diff", "llama", "palm", "-o", path, "--format", "json"], ["schema", "-o", path],
                 ["draw", "llama", "-o", path, "--format", "dot"]):
        refused(in_process(argv, capsys), "archc writes only regular files")
    assert not os.path.isfile(path)  # still the FIFO / the device


def test_failed_draw_leaves_no_report(tmp_path, capsys):
    refused(in_process(["diff", "llama", "palm", "-o", tmp_path / "g.md", "--draw", tmp_path / "g.xyz"], capsys), "g.xyz")
    assert list(tmp_path.iterdir()) == []


# ---- compile never deletes what it did not write -------------------------------------------

def test_compile_keeps_foreign_files_beside_a_model_onnx(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "model.onnx").touch()
    (d / "tokenizer.json").write_text("x")
    refused(in_process(["compile", "llama", *T, "-o", d, "--force"], capsys), "tokenizer.json", "did not write")
    assert (d / "tokenizer.json").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compile_hf_dir_onto_itself(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(CFG))
    (hf / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    refused(in_process(["compile", hf, "-o", hf], capsys), "input")
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


def test_compile_spec_into_its_own_folder(tmp_path, capsys):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "my.yaml").write_text("extends: llama\nname: mine\n")
    refused(in_process(["compile", d / "my.yaml", *T, "-o", d], capsys), "input")
    assert (d / "my.yaml").exists()


def test_recompile_replaces_archc_files_only(tmp_path, capsys):
    """Negative control: a directory archc wrote is replaced; its manifest lists every file."""
    from archc.files import MANIFEST

    out = tmp_path / "m"
    assert in_process(["compile", "llama", *T, "-o", out], capsys)[0] == 0
    listed = set(json.loads((out / MANIFEST).read_text())["archc_wrote"])
    assert listed == {p.name for p in out.iterdir()}
    assert in_process(["compile", "llama", *T, "--seed", "3", "-o", out, "--force"], capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    refused(in_process(["compile", "llama", *T, "-o", out, "--force"], capsys), "notes.txt")  # --force replaces archc's files only
    assert (out / "notes.txt").read_text() == "mine"


def test_legacy_model_dir_without_manifest_is_still_replaced(tmp_path, capsys):
    from archc.files import MANIFEST

    out = tmp_path / "m"
    assert in_process(["compile", "llama", *T, "-o", out], capsys)[0] == 0
    (out / MANIFEST).unlink()
    assert in_process(["compile", "llama", *T, "-o", out, "--force"], capsys)[0] == 0


# ---- 6.8 paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    lambda p: ["validate", p], lambda p: ["schema", "-o", p], lambda p: ["compile", p, "-o", p.parent / "m"],
    lambda p: ["show", p],
])
def test_name_too_long_is_one_line(command, tmp_path, capsys):
    refused(in_process(command(tmp_path / ("a" * 300 + ".yaml")), capsys), "too long")


def test_name_too_long_in_extends(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(f"extends: {'b' * 300}.yaml\nname: x\n")
    refused(in_process(["validate", tmp_path / "s.yaml"], capsys), "too long")


def test_longest_legal_name_is_written(tmp_path, capsys):
    """249 characters + '.json' = 254 bytes: legal; the temporary name must not push it past 255."""
    out = tmp_path / ("b" * 249 + ".json")
    assert in_process(["schema", "-o", out], capsys)[0] == 0
    assert json.loads(out.read_text())
    spec = tmp_path / ("c" * 250 + ".yaml")
    spec.write_text("extends: llama\nname: long\n")
    assert in_process(["diff", spec, "llama", "-o", tmp_path / ("d" * 250 + ".md")], capsys)[0] in (0, 1)


def test_symlink_loop(tmp_path, capsys):
    os.symlink(tmp_path / "l2.yaml", tmp_path / "l1.yaml")
    os.symlink(tmp_path / "l1.yaml", tmp_path / "l2.yaml")
    refused(in_process(["validate", tmp_path / "l1.yaml"], capsys), "symbolic link loop")
    (tmp_path / "s.yaml").write_text("extends: l1.yaml\nname: x\n")
    refused(in_process(["validate", tmp_path / "s.yaml"], capsys), "loop")
    refused(in_process(["diff", "llama", "palm", "-o", tmp_path / "l1.yaml" / "x.md"], capsys))


def test_long_extends_chain_is_capped(tmp_path, capsys):
    from archc.loader import MAX_EXTENDS

    n = 1500
    (tmp_path / "s0.yaml").write_text("extends: llama\nname: s0\n")
    for i in range(1, n):
        (tmp_path / f"s{i}.yaml").write_text(f"extends: s{i - 1}.yaml\n")
    refused(in_process(["validate", tmp_path / f"s{n - 1}.yaml"], capsys), f"longer than {MAX_EXTENDS}")
    # a chain within the cap resolves (negative control)
    assert in_process(["validate", tmp_path / f"s{MAX_EXTENDS - 2}.yaml"], capsys)[0] == 0


def test_fifo_inputs_do_not_hang(tmp_path, capsys):
    with deadline(60):
        _fifo_inputs(tmp_path, capsys)


def _fifo_inputs(tmp_path, capsys):
    os.mkfifo(tmp_path / "spec.yaml")
    refused(in_process(["validate", tmp_path / "spec.yaml"], capsys), "FIFO")
    hf = tmp_path / "hf"
    hf.mkdir()
    os.mkfifo(hf / "config.json")
    refused(in_process(["import-hf", hf, "-o", tmp_path / "x.yaml"], capsys), "FIFO")
    os.symlink("/dev/zero", tmp_path / "zero.yaml")
    refused(in_process(["validate", tmp_path / "zero.yaml"], capsys), "character device")
    m = tmp_path / "m"
    m.mkdir()
    os.mkfifo(m / "model.onnx")
    refused(in_process(["run", m, "--prompt-ids", "1", "--device", "cpu"], capsys), "FIFO")
