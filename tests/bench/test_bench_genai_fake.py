"""`archc bench`'s genai plumbing against a stand-in onnxruntime_genai (no genai needed, CPU, seconds):
what the harness does with a worker's failure, which builder options a bench command gives genai's
builder, and when a build in --work-dir is reused. The stand-in builder writes a genai_config.json and
records its command line (builder_args.json); the stand-in generator fails the way genai's CUDA run of
issue 14 did (a GroupQueryAttention node's non-zero status). What genai itself computes is tested
against the real package in test_bench_genai.py."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from archc.bench.genai import GENAI_PYTHON_ENV
from archc.cli import main

TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "attention.sharing=gqa", "mlp.d_ff=160",
        "vocab_size=97", "max_seq_len=64", "dtype=float32"]
GQA_FAILURE = ("Non-zero status code returned while running GroupQueryAttention node. Name:'/model/layers.0/attn/GroupQueryAttention' "
               "Status Message: stand-in")


def _sets(extra=()):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


FAKE_INIT = f'''
__version__ = "0.0-stand-in"


class Config:
    def __init__(self, d): self.d = d
    def clear_providers(self): pass
    def append_provider(self, name): pass
    def set_provider_option(self, *a): pass


class Model:
    def __init__(self, config): self.config = config


class GeneratorParams:
    def __init__(self, model): pass
    def set_search_options(self, **kw): pass


class Generator:
    def __init__(self, model, params):
        raise RuntimeError({GQA_FAILURE!r})
'''

FAKE_BUILDER = '''
import argparse, json, os, sys
p = argparse.ArgumentParser()
for a in ("-i", "-o", "-c", "-p", "-e"):
    p.add_argument(a)
p.add_argument("--extra_options", nargs="+", default=[])
a = p.parse_args()
os.makedirs(a.o, exist_ok=True)
with open(os.path.join(a.o, "genai_config.json"), "w") as f:
    json.dump({"model": {"eos_token_id": 2}}, f)
with open(os.path.join(a.o, "builder_args.json"), "w") as f:
    json.dump({"input": a.i, "argv": sys.argv[1:]}, f)
'''


@pytest.fixture
def fake_genai(tmp_path, monkeypatch):
    """ARCHC_GENAI_PYTHON: this python with the stand-in onnxruntime_genai first on its path."""
    pkg = tmp_path / "fake-genai" / "onnxruntime_genai"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_INIT)
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "builder.py").write_text(FAKE_BUILDER)
    py = tmp_path / "fake-genai" / "python"
    py.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        PYTHONPATH={pkg.parent}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"
        """))
    py.chmod(0o755)
    monkeypatch.setenv(GENAI_PYTHON_ENV, str(py))
    return py


def _bench(tmp_path, args, capsys, work="work"):
    out = tmp_path / "b.json"
    try:
        code = main(["bench", *args, "--device", "cpu", "--dtype", "fp32", "--new-tokens", "3", "--repeats", "1",
                     "--work-dir", str(tmp_path / work), "--json", str(out), "--force"])  # one report file, rewritten per call
    except SystemExit as e:
        code = e.code
    o, e = capsys.readouterr()
    return code, o + e, (json.loads(out.read_text()) if code == 0 else None)


def _builds(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("genai-*/builder_args.json"))]


def test_worker_failure_is_reported_once(fake_genai, tmp_path, capsys):
    """The worker's `RuntimeError: ...` reaches the JSON and the table as it is, on the failing shape and
    on the next one (it read `RuntimeError: RuntimeError: RuntimeError: Non-zero status code ...`)."""
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "genai", "--prompt-len", "4,6"], capsys)
    assert code == 0, text
    errors = [run["backends"][0]["error"] for run in data["runs"]]
    assert errors == [f"RuntimeError: {GQA_FAILURE}"] * 2
    table_notes = [line for line in text.splitlines() if "Non-zero status" in line and "│" in line]
    assert table_notes and all("RuntimeError: Non-zero status" in line and "RuntimeError: RuntimeError" not in line
                               for line in table_notes)


# ---- --quant options: compile's, passed to both sides --------------------------------------------------------


def _ort_quant(export: Path):
    """The quantization an ort export holds, read two ways: archc's metadata and the MatMulNBits nodes themselves."""
    import onnx

    from archc.quant import model_dir_quant

    model = onnx.load(str(export / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = {(a.name, a.i) for n in nbits for a in n.attribute if a.name in ("block_size", "accuracy_level", "bits")}
    zero_points = {len(n.input) > 3 and bool(n.input[3]) for n in nbits}
    head_quantized = any("head" in n.name for n in nbits)
    return model_dir_quant(export), attrs, zero_points, head_quantized


@pytest.mark.parametrize("head", [False, True])
def test_quant_options_reach_both_sides(fake_genai, tmp_path, capsys, head):
    """--quant-block-size/-scheme/-accuracy-level/--quant-head: the ort export is quantized with them (its
    nodes say so) and genai's builder is given the same (bench passed the kind only: block 32, symmetric)."""
    from archc.quant import QuantKind, QuantScheme, QuantSettings

    args = ["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "4", "--quant", "int4", "--quant-block-size", "64",
            "--quant-scheme", "asymmetric", "--quant-accuracy-level", "1"] + (["--quant-head"] if head else [])
    code, text, data = _bench(tmp_path, args, capsys)
    assert code == 0, text
    [export] = (tmp_path / "work").glob("llama-7b-portable-fp32-int4-*")
    stored, attrs, zero_points, head_quantized = _ort_quant(export)
    assert stored == QuantSettings(QuantKind.int4, 64, QuantScheme.asymmetric, 1, head)
    assert attrs == {("block_size", 64), ("accuracy_level", 1), ("bits", 4)} and zero_points == {True}
    assert head_quantized == head
    [build] = _builds(tmp_path / "work")
    extra = build["argv"][build["argv"].index("--extra_options") + 1:]
    assert build["argv"][build["argv"].index("-p") + 1] == "int4"
    assert extra == ["block_size=64", "is_symmetric=false", "accuracy_level=1"] + ([] if head else ["nodes_to_exclude=/lm_head/MatMul"])


@pytest.mark.parametrize("args, says", [
    (["--quant", "int4", "--quant-method", "search"], "--quant-method search with --backends genai"),
    (["--quant", "int8", "--quant-block-size", "512"], "--quant-block-size 512 with --backends genai"),
    (["--quant", "int4", "--quant-scheme", "skewed"], "--quant-scheme skewed: choose one of"),
    (["--quant", "int4", "--quant-block-size", "48"], "--quant-block-size 48: MatMulNBits needs a power of two"),
    (["--quant-method", "search"], "--quant-method search: applies to a quantized export"),
])
def test_quant_settings_genai_cannot_build_are_one_line(fake_genai, tmp_path, capsys, args, says):
    code, text, _ = _bench(tmp_path, ["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "4", *args], capsys)
    assert code == 2 and says in text and len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # refused before anything was built


def test_search_method_still_runs_without_genai(tmp_path, capsys):
    """Negative control of the refusal above: archc's own export takes --quant-method search."""
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "ort", "--prompt-len", "4", "--quant", "int4",
                                         "--quant-method", "search"], capsys)
    assert code == 0, text
    [export] = (tmp_path / "work").glob("llama-7b-portable-fp32-int4-*")
    assert _ort_quant(export)[0].method.value == "search"


# ---- --work-dir: reused only for the same inputs -----------------------------------------------------------------


def _key(folder: Path) -> dict:
    return json.loads((folder / "archc-bench-key.json").read_text())


def test_another_seed_is_another_export(tmp_path, capsys):
    """The same --work-dir, init.seed 0, then 1, then 0: the ort export is archc's PyTorch module's tokens each time
    (the oracle: the module built from the spec's own seeded init). The name alone decided before, so the seed-1
    run reused the seed-0 export (and its tokens disagreed); the third run reuses the first export."""
    folders, export_s = [], []
    for seed in (0, 1, 0):
        code, text, data = _bench(tmp_path, ["llama", *_sets([f"init.seed={seed}"]), "--backends", "torch,ort",
                                             "--prompt-len", "6", "--batch", "2"], capsys)
        assert code == 0, text
        ort = {b["backend"]: b for b in data["runs"][0]["backends"]}["ort"]
        assert ort["tokens_agree"] == 3, (seed, ort)
        export_s.append(ort["export_s"])
        folders.append(sorted(p.name for p in (tmp_path / "work").iterdir()))
    assert len(folders[1]) == 2 and folders[2] == folders[1]
    assert export_s[0] is not None and export_s[1] is not None and export_s[2] is None  # the third reused the first
    seeds = sorted(_key(tmp_path / "work" / name)["parts"]["spec"]["init"]["seed"] for name in folders[1])
    assert seeds == [0, 1]


def test_other_archc_code_is_another_export(tmp_path, capsys, monkeypatch):
    """The same spec and options under the same version but other archc code (a development checkout edited
    between runs): a new export, not the one the older code made (the fingerprint had the version only). Negative
    control: the code unchanged reuses."""
    from archc.bench import workdir

    runs, this = [], workdir.code_digest()
    for code_digest in (this, this, "0" * 64):
        monkeypatch.setattr(workdir, "code_digest", lambda d=code_digest: d)
        code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "ort", "--prompt-len", "4"], capsys)
        assert code == 0, text
        runs.append((data["runs"][0]["backends"][0]["export_s"], sorted(p.name for p in (tmp_path / "work").iterdir())))
    assert runs[0][0] is not None and runs[1][0] is None and runs[2][0] is not None
    assert len(runs[1][1]) == 1 and len(runs[2][1]) == 2
    assert sorted(_key(tmp_path / "work" / name)["parts"]["code"] for name in runs[2][1]) == ["0" * 64, this]


_DIGEST = "from archc.bench.workdir import code_digest; print(code_digest())"


def test_code_digest_follows_the_files(tmp_path):
    """code_digest of a copy of archc and exporters equals this tree's (the same bytes); one byte added to a module of
    either package changes it; a file that is not .py does not."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[2]
    ignore = shutil.ignore_patterns("__pycache__")
    for pkg in ("archc", "exporters"):
        shutil.copytree(root / pkg, tmp_path / pkg, ignore=ignore)

    def digest(where: Path) -> str:
        env = {**os.environ, "PYTHONPATH": str(where)}
        return subprocess.run([sys.executable, "-c", _DIGEST], env=env, cwd=where, capture_output=True, text=True,
                              check=True).stdout.strip()

    here = digest(root)
    assert digest(tmp_path) == here
    (tmp_path / "archc" / "notes.txt").write_text("not code")
    assert digest(tmp_path) == here
    for module in ("archc/quant.py", "exporters/__init__.py"):
        with open(tmp_path / module, "a") as f:
            f.write("\n")
        changed = digest(tmp_path)
        assert changed != here
        here = changed


def _export_hf(d: Path, seed: int, force: bool = False) -> Path:
    assert main(["export-hf", "llama", *_sets([f"init.seed={seed}"]), "-o", str(d), *(["--force"] if force else [])]) == 0
    return d


def test_a_rewritten_checkpoint_is_exported_again(tmp_path, capsys):
    """`archc bench HF_DIR`: the directory's checkpoint written again (another seed, same names) is a new export;
    the same directory untouched is reused."""
    hf = _export_hf(tmp_path / "hf", seed=0)
    runs = []
    for step in ("first", "same", "rewritten"):
        if step == "rewritten":
            _export_hf(hf, seed=1, force=True)
        code, text, data = _bench(tmp_path, [str(hf), "--backends", "ort", "--prompt-len", "6"], capsys)
        assert code == 0, text
        runs.append((data["runs"][0]["backends"][0]["export_s"], sorted((tmp_path / "work").iterdir())))
    assert runs[0][0] is not None and runs[1][0] is None and runs[2][0] is not None
    assert len(runs[1][1]) == 1 and len(runs[2][1]) == 2
    old, new = (_key(p)["parts"]["weights"]["files"] for p in runs[2][1])
    assert old != new


def test_genai_follows_the_seed(fake_genai, tmp_path, capsys):
    """The seeded checkpoint genai's builder reads, and its build, are per seed too (hf-seeded/ was written once and
    reused for any seed)."""
    for seed in (0, 1):
        code, text, _ = _bench(tmp_path, ["llama", *_sets([f"init.seed={seed}"]), "--backends", "genai", "--prompt-len", "4"],
                               capsys)
        assert code == 0, text
    seeded = sorted((tmp_path / "work").glob("hf-seeded-*"))
    assert len(seeded) == 2
    assert sorted(b["input"] for b in _builds(tmp_path / "work")) == [str(p) for p in seeded]


@pytest.mark.parametrize("which, backend", [("llama-7b-portable-fp32-*", "ort"), ("hf-seeded-*", "genai"), ("genai-fp32-cpu-*", "genai")])
@pytest.mark.parametrize("how", ["users", "other-key"])
def test_a_folder_archc_did_not_seal_is_never_reused_or_replaced(fake_genai, tmp_path, capsys, which, backend, how):
    """A folder under the name archc would use, that archc's key does not vouch for (a folder of the user's, or
    a key recording other inputs): one line naming --work-dir, exit 2, the folder as it was."""
    args = ["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "4"]
    code, text, _ = _bench(tmp_path, args, capsys)
    assert code == 0, text
    [folder] = (tmp_path / "work").glob(which)
    if how == "users":
        import shutil

        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    else:
        key = _key(folder)
        key["fingerprint"] = "0" * 64
        (folder / "archc-bench-key.json").write_text(json.dumps(key))
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file())
    code, text, _ = _bench(tmp_path, ["llama", *_sets(), "--backends", backend, "--prompt-len", "4"], capsys)
    assert code == 2 and "--work-dir" in text and folder.name in text and len(text.strip().splitlines()) == 1, text
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file()) == before


# ---- the worker's log: in archc's own build folder, never a file of the user's -----------------------------------

DYING_INIT = '''
import os, sys
__version__ = "0.0-stand-in"


class Config:
    def __init__(self, d): pass
    def clear_providers(self): pass


class Model:
    def __init__(self, config):
        print("stand-in genai: out of device memory", file=sys.stderr, flush=True)
        os._exit(3)
'''


def test_worker_log_never_replaces_a_users_file(fake_genai, tmp_path, capsys):
    """--work-dir/genai.stderr of the user's stays as it was (the worker's log was written there, replacing it); the
    log is in the genai build folder archc made."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("genai.stderr", "genai-graph.stderr"):
        (work / name).write_text("the user's notes\n")
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "genai", "--prompt-len", "4"], capsys)
    assert code == 0, text
    assert all((work / name).read_text() == "the user's notes\n" for name in ("genai.stderr", "genai-graph.stderr"))
    [build] = work.glob("genai-fp32-cpu-*")
    assert (build / "archc-genai.stderr").is_file()


def test_a_dead_worker_names_its_log(fake_genai, tmp_path, capsys):
    """A worker that dies: the message has its last stderr line and the path of the whole log, which holds it."""
    (fake_genai.parent / "onnxruntime_genai" / "__init__.py").write_text(DYING_INIT)
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "genai", "--prompt-len", "4"], capsys)
    assert code == 0, text
    error = data["runs"][0]["backends"][0]["error"]
    [build] = (tmp_path / "work").glob("genai-fp32-cpu-*")
    log = build / "archc-genai.stderr"
    assert error.startswith("RuntimeError: genai worker ended (exit 3): stand-in genai: out of device memory") and str(log) in error, error
    assert "out of device memory" in log.read_text()
