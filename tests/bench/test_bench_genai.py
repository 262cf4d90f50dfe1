"""`archc bench`'s genai backends on the CPU: onnxruntime-genai's builder builds the same checkpoint archc
compiles, genai's generator runs it in its own process, and its greedy tokens are archc's runner's.

genai lives in its own venv (scripts/genai_env.sh; ARCHC_GENAI_PYTHON), as in tests/genai: without it these
skip, unless ARCHC_REQUIRE_GENAI=1 (CI) makes that a failure. The bad-input tests need no genai.
Token agreement is the comparison; a negative control (genai's build of another checkpoint in the place the
bench reuses) shows the harness's count can come out short. The oracle is independent of archc's export:
genai's builder reads the Hugging Face checkpoint with its own code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from archc.bench.genai import GENAI_PYTHON_ENV, PLACEHOLDER_SPECIALS, write_placeholder_tokenizer
from archc.cli import main
from conftest import genai_python_or_skip

pytestmark = [pytest.mark.genai, pytest.mark.slow]

VOCAB = 512  # big enough that the placeholder eos (id 2, masked by genai's min_length) is rarely the argmax
TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "attention.sharing=gqa", "mlp.d_ff=160",
        f"vocab_size={VOCAB}", "max_seq_len=64", "dtype=float32"]
N = 8


def _sets(extra=()):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


@pytest.fixture
def genai_env(monkeypatch):
    py = genai_python_or_skip()
    monkeypatch.setenv(GENAI_PYTHON_ENV, py)
    return py


def _hf_dir(tmp_path: Path, seed: int = 0, tokenizer: bool = True, name: str = "hf") -> Path:
    d = tmp_path / name
    assert main(["export-hf", "llama", *_sets([f"init.seed={seed}"]), "-o", str(d)]) == 0
    if tokenizer:
        write_placeholder_tokenizer(d, VOCAB)
    return d


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One checkpoint and one work directory for the tests that may share genai's builds (each takes seconds)."""
    root = tmp_path_factory.mktemp("genai-bench")
    return _hf_dir(root), root / "work"


def _bench(args: list[str], out: Path) -> dict:
    code = main(["bench", *args, "--device", "cpu", "--dtype", "fp32", "--new-tokens", str(N), "--repeats", "1", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def _by_backend(run: dict) -> dict:
    return {b["backend"]: b for b in run["backends"]}


def test_genai_builds_the_hf_dir_and_gives_archcs_tokens(genai_env, shared, tmp_path):
    hf, work = shared
    data = _bench([str(hf), "--backends", "ort,genai,genai-graph", "--batch", "1,2", "--prompt-len", "12",
                   "--work-dir", str(work)], tmp_path / "b.json")
    assert len(data["runs"]) == 2
    for run in data["runs"]:
        by = _by_backend(run)
        assert by["ort"]["error"] is None and by["genai"]["error"] in (None, f"T({N}) <= T(1): timing noise exceeds decode time; "
                                                                            "raise --repeats or --new-tokens")
        assert by["genai"]["tokens_agree"] == N  # every greedy token, every row (the batch-2 run too)
        assert by["genai"]["prefill_ms"] > 0 and by["genai"]["export_s"] > 0 and by["ort"]["export_s"] >= 0
        assert by["genai"]["model_bytes"] > 0 and by["ort"]["model_bytes"] > 0
        assert "CUDA graphs need --device cuda" in by["genai-graph"]["error"]  # a CPU run says why, not fatal
    [built] = work.glob("genai-fp32-cpu-*")  # named by a fingerprint of its inputs (archc.bench.workdir)
    assert (built / "genai_config.json").is_file()
    assert not list(work.glob(".*.tmp"))  # the builder's temporary output is gone


def test_spec_gets_a_seeded_hf_dir_with_placeholder_tokenizer(genai_env, tmp_path, capsys):
    """`archc bench SPEC --backends genai`: the seeded init goes through export-hf plus a placeholder
    tokenizer (the random-weights comparison), and genai's tokens are archc's."""
    work = tmp_path / "work"
    data = _bench(["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "10", "--work-dir", str(work)], tmp_path / "b.json")
    assert _by_backend(data["runs"][0])["genai"]["tokens_agree"] == N
    [seeded] = work.glob("hf-seeded-*")
    tok = json.loads((seeded / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == VOCAB and list(tok["model"]["vocab"])[:3] == list(PLACEHOLDER_SPECIALS)


def test_int4_both_engines_build_and_run(genai_env, shared, tmp_path):
    """--quant int4: archc's MatMulNBits export and genai's int4 build of the same checkpoint both run and are
    smaller than the fp32 ones (tokens may differ: two round-to-nearest implementations; both keep the head dense)."""
    hf, work = shared
    data = _bench([str(hf), "--backends", "ort,genai", "--prompt-len", "12", "--quant", "int4", "--work-dir", str(work)],
                  tmp_path / "q.json")
    by = _by_backend(data["runs"][0])
    assert by["genai"]["prefill_ms"] > 0 and by["ort"]["prefill_ms"] > 0
    [built] = work.glob("genai-int4-cpu-*")
    assert (built / "genai_config.json").is_file()
    key = json.loads((built / "archc-bench-key.json").read_text())
    assert key["parts"]["args"][-4:] == ["block_size=32", "is_symmetric=true", "accuracy_level=0", "nodes_to_exclude=/lm_head/MatMul"]
    dense = _bench([str(hf), "--backends", "ort,genai", "--prompt-len", "12", "--work-dir", str(work)], tmp_path / "d.json")
    dense_by = _by_backend(dense["runs"][0])
    for name in ("ort", "genai"):
        assert by[name]["model_bytes"] < dense_by[name]["model_bytes"]


def test_token_check_can_fail(genai_env, tmp_path, capsys):
    """Negative control: genai's build of another seed's checkpoint, copied over the files of the build the bench
    reuses (its key kept, so the bench trusts it), does not give archc's tokens, and the harness reports the shortfall."""
    import shutil

    hf, other = _hf_dir(tmp_path), _hf_dir(tmp_path, seed=1, name="other")
    _bench([str(other), "--backends", "genai", "--prompt-len", "12", "--work-dir", str(tmp_path / "w1")], tmp_path / "o.json")
    work = tmp_path / "work"
    data = _bench([str(hf), "--backends", "ort,genai", "--prompt-len", "12", "--work-dir", str(work)], tmp_path / "a.json")
    assert _by_backend(data["runs"][0])["genai"]["tokens_agree"] == N
    [theirs], [ours] = (tmp_path / "w1").glob("genai-*"), work.glob("genai-*")
    for f in theirs.iterdir():
        if f.is_file() and f.name != "archc-bench-key.json":
            shutil.copyfile(f, ours / f.name)
    data = _bench([str(hf), "--backends", "ort,genai", "--prompt-len", "12", "--work-dir", str(work)], tmp_path / "b.json")
    assert _by_backend(data["runs"][0])["genai"]["tokens_agree"] < N


# ---- bad input: one line, exit 2 (no genai needed) ---------------------------------------------------------


def _run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out + err


def test_hf_dir_without_tokenizer_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(GENAI_PYTHON_ENV, sys.executable)  # a python exists; the directory is what is wrong
    hf = _hf_dir(tmp_path, tokenizer=False)
    capsys.readouterr()
    code, text = _run_cli(["bench", str(hf), "--device", "cpu", "--backends", "genai"], capsys)
    assert code == 2 and "no tokenizer.json" in text and str(hf) in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_missing_genai_python_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(GENAI_PYTHON_ENV, str(tmp_path / "nope" / "python"))
    code, text = _run_cli(["bench", "llama", *_sets(), "--device", "cpu", "--backends", "ort,genai"], capsys)
    assert code == 2 and GENAI_PYTHON_ENV in text and "genai_env.sh" in text and len(text.strip().splitlines()) == 1


def test_seeded_backends_refuse_an_hf_dir(tmp_path, capsys):
    hf = _hf_dir(tmp_path)
    capsys.readouterr()
    code, text = _run_cli(["bench", str(hf), "--device", "cpu", "--backends", "ort,torch"], capsys)
    assert code == 2 and "--backends torch" in text and len(text.strip().splitlines()) == 1


def test_builder_failure_is_one_line(genai_env, tmp_path, capsys):
    hf = _hf_dir(tmp_path)
    capsys.readouterr()
    (hf / "model.safetensors").write_bytes(b"not a checkpoint")
    code, text = _run_cli(["bench", str(hf), "--device", "cpu", "--dtype", "fp32", "--backends", "genai", "--new-tokens", "4",
                           "--prompt-len", "4", "--work-dir", str(tmp_path / "work")], capsys)
    assert code == 2 and "genai builder failed" in text and len(text.strip().splitlines()) == 1
    assert not list((tmp_path / "work").glob("genai-*")) and not list((tmp_path / "work").glob(".genai-*"))


# a folder of the user's in --work-dir under a name the bench uses: test_bench_genai_fake.py
# (test_a_folder_archc_did_not_seal_is_never_reused_or_replaced)


@pytest.mark.parametrize("args, says", [(["--quant", "int3"], "--quant int3"), (["--quant", "int4", "--backends", "ort,torch"], "--quant"),
                                        (["--quant", "int4", "--dtype", "bf16", "--backends", "ort"], "--quant with --dtype bf16")])
def test_bench_quant_bad_input_is_one_line(capsys, args, says):
    code, text = _run_cli(["bench", "llama", *_sets(), "--device", "cpu", *args], capsys)
    assert code == 2 and says in text and len(text.strip().splitlines()) == 1, text
