"""6.4 data loss through -o, and 6.8 paths: long names, symlink loops, extends depth, special files.

Rule under test (archc/files.py): never replace or delete an input, a special file or a file archc
did not write; an existing regular file at a single-file output (-o FILE, --draw, --json) is
replaced only with --force."""

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


def test_ordinary_overwrite_needs_force(tmp_path, spec, capsys):
    """-o onto an earlier output (a regular file, not an input) is the user's file: refused without
    --force, byte for byte kept; with --force (the negative control) replaced by the report."""
    out = tmp_path / "d.md"
    out.write_text("old")
    refused(in_process(["diff", spec, "llama", "-o", out], capsys), f"-o {out}", "add --force to replace it")
    assert out.read_text() == "old"
    code, _, err = in_process(["diff", spec, "llama", "-o", out, "--force"], capsys)
    assert code in (0, 1), err
    assert out.read_text().startswith("**archc diff: mine")


# ---- every option that writes one file: an existing file only with --force -------------------

def _hf_dir(tmp_path):
    d = tmp_path / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(CFG))
    return d


# (option as the message names it, argv given the output path, a check that the new bytes are this command's)
SINGLE_FILE_OUTPUTS = {
    "diff -o": ("-o", lambda tp, s, o: ["diff", s, "llama", "-o", o.with_suffix(".md")], lambda b: b.startswith(b"**archc diff: mine")),
    "diff --draw": ("--draw", lambda tp, s, o: ["diff", s, "llama", "--draw", o.with_suffix(".dot")],
                    lambda b: b.startswith(b"digraph")),
    "compare -o": ("-o", lambda tp, s, o: ["compare", s, "llama", "-o", o.with_suffix(".json")],
                   lambda b: json.loads(b) is not None),
    "draw -o": ("-o", lambda tp, s, o: ["draw", s, "-o", o.with_suffix(".dot")], lambda b: b.startswith(b"digraph")),
    "schema -o": ("-o", lambda tp, s, o: ["schema", "-o", o.with_suffix(".json")], lambda b: b'"$schema"' in b),
    "import-hf -o": ("-o", lambda tp, s, o: ["import-hf", _hf_dir(tp), "-o", o.with_suffix(".yaml")],
                     lambda b: b.startswith(b"# Imported by `archc import-hf`")),
    "bench --json": ("--json", lambda tp, s, o: ["bench", s, *T, "--device", "cpu", "--dtype", "fp32", "--backends", "torch",
                                                 "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1",
                                                 "--json", o.with_suffix(".json")],
                     lambda b: json.loads(b)["runs"][0]["prompt_len"] == 8),
}


def _output_of(argv, option):
    return argv[argv.index(option) + 1]


@pytest.mark.parametrize("which", list(SINGLE_FILE_OUTPUTS))
def test_single_file_output_refused_without_force(which, tmp_path, spec, capsys, monkeypatch):
    """Refused up front, before any work: archc.compile (bench's export and measuring start there)
    must not be reached, and the file keeps every byte."""
    import archc

    option, argv_for, _ = SINGLE_FILE_OUTPUTS[which]
    argv = argv_for(tmp_path, spec, tmp_path / "out")
    out = _output_of(argv, option)
    out.write_bytes(b"the user's \x00 bytes\n")
    monkeypatch.setattr(archc, "compile", lambda *a, **k: pytest.fail("work began before the output was checked"))
    refused(in_process(argv, capsys), f"{option} {out}: exists", "add --force to replace it")
    assert out.read_bytes() == b"the user's \x00 bytes\n"
    assert not list(tmp_path.glob(".archc.*"))


@pytest.mark.parametrize("which", list(SINGLE_FILE_OUTPUTS))
def test_single_file_output_replaced_with_force(which, tmp_path, spec, capsys):
    option, argv_for, looks_right = SINGLE_FILE_OUTPUTS[which]
    argv = argv_for(tmp_path, spec, tmp_path / "out") + ["--force"]
    out = _output_of(argv, option)
    out.write_bytes(b"old")
    code, _, err = in_process(argv, capsys)
    assert code in (0, 1), err  # diff: 1 = the two specs differ
    assert looks_right(out.read_bytes()), out.read_bytes()[:200]
    assert not list(tmp_path.glob(".archc.*"))  # replaced atomically: no temporary file left


@pytest.mark.parametrize("which", list(SINGLE_FILE_OUTPUTS))
def test_single_file_output_directory_or_file_on_the_way(which, tmp_path, spec, capsys, monkeypatch):
    """A directory at the output, or a file where its folder should be: one line up front, --force or not."""
    import archc

    option, argv_for, _ = SINGLE_FILE_OUTPUTS[which]
    monkeypatch.setattr(archc, "compile", lambda *a, **k: pytest.fail("work began before the output was checked"))
    argv = argv_for(tmp_path, spec, tmp_path / "out") + ["--force"]
    _output_of(argv, option).mkdir()
    refused(in_process(argv, capsys), option, "is a directory")
    (tmp_path / "afile").write_text("x")
    argv = argv_for(tmp_path, spec, tmp_path / "afile" / "sub" / "out") + ["--force"]
    refused(in_process(argv, capsys), option, "is not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder")
def test_single_file_output_unwritable_folder(tmp_path, spec, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(in_process(["diff", spec, "llama", "-o", ro / "d.md"], capsys), "-o", "permission denied")
    finally:
        ro.chmod(0o755)


def test_draw_fallback_dot_file_needs_force_too(tmp_path, spec, capsys, monkeypatch):
    """svg without Graphviz writes PATH.dot instead; an existing PATH.dot is the user's as well."""
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "dot" else real(name, *a, **k))
    (tmp_path / "d.dot").write_text("mine")
    refused(in_process(["draw", spec, "-o", tmp_path / "d.svg"], capsys), "d.dot", "add --force to replace it")
    assert (tmp_path / "d.dot").read_text() == "mine" and not (tmp_path / "d.svg").exists()
    code, _, err = in_process(["draw", spec, "-o", tmp_path / "d.svg", "--force"], capsys)
    assert code == 2 and "Graphviz" in err  # the svg was not made (exit 2), the DOT text replaced the old file
    assert (tmp_path / "d.dot").read_text().startswith("digraph")


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
