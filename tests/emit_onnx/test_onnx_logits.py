"""`archc compile --logits last`: the head computes the last position only, logits [batch, 1, vocab].

Oracles: the same spec exported with the contract's full logits (`all`, itself checked in
test_onnx_export / test_onnx_hf), and the PyTorch emitter run here on the same feeds: the `last`
model's logits must equal the `all` model's last column (1e-5) and the PyTorch module's last position
(1e-4) in a left-padded prefill and in cached decode steps, on both targets (cuda on the CPU via
fused_fp32, GroupQueryAttention's packed layout included), and greedy / sampled generation must be
the same. Negative control: a head that takes position 0 instead of the last fails the comparison
(checked by hand as well: that mutation fails 18 tests of this file; leaving the last attention's
output in GroupQueryAttention's packed layout in `last` exports only fails llama/palm on cuda). The runner's guard against full logits past 32-bit indexing is
driven through `archc run` with its limit lowered.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import torch  # noqa: F401  (a test dependency: fail, never skip, when missing)
import onnxruntime as ort

import archc  # noqa: E402
import archc.runner.session  # noqa: E402
from archc.runner import Session  # noqa: E402
from conftest import SPECS, run_cli, tiny_sets, tiny_spec  # noqa: E402
from exporters import onnx_lowering_portable as portable  # noqa: E402
from exporters.onnx_export import export  # noqa: E402
from ort_steps import rel_err, run_ort, run_torch, session  # noqa: E402

NAMES = ["llama", "bloom", "glm", "palm"]
PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]
TOL = 1e-5  # the same computation on one position: only GEMM blocking may differ


def step_logits(sess, spec, steps: int = 2, pads=(0, 2), prompt: int = 5, seed: int = 0) -> list:
    """Logits of a left-padded prefill and `steps` cached decode steps (fixed random ids)."""
    return [logits for _, logits in run_ort(sess, spec, steps=steps, pads=pads, prompt=prompt, seed=seed)]


def torch_last(spec, steps: int = 2, pads=(0, 2), prompt: int = 5, seed: int = 0) -> list:
    """The PyTorch emitter's last-position logits for the same feeds as step_logits (an independent
    oracle, so a mistake shared by both exports cannot pass)."""
    from exporters.torch_module import build_module

    graph = archc.compile(spec)
    out = run_torch(build_module(graph), graph, steps=steps, pads=pads, prompt=prompt, seed=seed)
    return [logits[:, -1] for _, logits in out]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(name, target) -> (spec, dir of the `all` export, dir of the `last` export), fp32, made once."""
    root = tmp_path_factory.mktemp("logits")
    cache = {}

    def get(name, target):
        if (name, target) not in cache:
            spec = tiny_spec(name)
            graph = archc.compile(spec)
            dirs = []
            for kind in ("all", "last"):
                d = root / f"{name}-{target}-{kind}"
                res = export(graph, d, target=target, logits=kind, fused_fp32=True)
                assert res.logits.value == kind
                dirs.append(d)
            cache[name, target] = (spec, *dirs)
        return cache[name, target]

    return get


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("name", NAMES)
def test_last_equals_the_last_column_of_all(name, target, pair):
    spec, d_all, d_last = pair(name, target)
    full, last = step_logits(session(d_all), spec), step_logits(session(d_last), spec)
    ref = torch_last(spec, steps=2)
    for i, (a, b) in enumerate(zip(full, last)):
        assert b.shape == (2, 1, spec.vocab_size), (i, b.shape)
        assert rel_err(b[:, 0], a[:, -1]) <= TOL, f"{name}/{target} step {i}"
        assert rel_err(b[:, 0], ref[i]) <= 1e-4, f"{name}/{target} step {i} vs the PyTorch emitter"
    if target == "cuda" and name in ("llama", "palm"):  # the packed layout really was in play
        meta = session(d_last).get_modelmeta().custom_metadata_map
        assert "GroupQueryAttention" in meta["archc.lowering"] and meta["archc.logits"] == "last"


@pytest.mark.parametrize("target", ["portable", "cuda"])
@pytest.mark.parametrize("name", NAMES)
def test_generation_is_the_same(name, target, pair):
    _, d_all, d_last = pair(name, target)
    a, b = Session(d_all, device="cpu"), Session(d_last, device="cpu")
    assert (a.logits, b.logits) == ("all", "last")
    assert b.generate(PROMPTS, 5).ids == a.generate(PROMPTS, 5).ids
    kw = dict(top_k=20, top_p=0.95, temperature=2.0, seed=11)
    assert b.generate(PROMPTS, 6, **kw).ids == a.generate(PROMPTS, 6, **kw).ids
    if target == "cuda" and b.kv_cache == "shared":  # the device path: IO binding, fixed decode buffers
        for io in (True, "static"):
            assert Session(d_last, device="cpu", io_binding=io).generate(PROMPTS, 5).ids == a.generate(PROMPTS, 5).ids
    logits, _ = b.forward(np.array([[1, 2, 3]]))
    assert logits.shape == (1, 1, b.vocab)  # forward returns what the model gives


@pytest.mark.parametrize("target", ["portable", "cuda"])
def test_negative_control_position_zero_fails(target, pair, tmp_path, monkeypatch):
    """A head that reads position 0 instead of the last must fail the comparison above."""
    spec, d_all, _ = pair("llama", target)
    monkeypatch.setattr(portable, "last_position", lambda ctx, x: ctx.op(
        "Slice", [x, ctx.const(np.array([0], np.int64)), ctx.const(np.array([1], np.int64)), ctx.const(np.array([1], np.int64))]))
    export(archc.compile(spec), tmp_path / "wrong", target=target, logits="last", fused_fp32=True)
    full, wrong = step_logits(session(d_all), spec, steps=0), step_logits(session(tmp_path / "wrong"), spec, steps=0)
    assert wrong[0].shape == (2, 1, spec.vocab_size)
    assert rel_err(wrong[0][:, 0], full[0][:, -1]) > 1e-2


@pytest.mark.parametrize("target, dtype", [("portable", "fp32"), ("cuda", "fp16")])
def test_checker_bytes_and_structure(target, dtype, tmp_path):
    graph = archc.compile(tiny_spec("palm"))
    for d in ("a", "b"):
        export(graph, tmp_path / d, target=target, dtype=dtype, logits="last")
    export(graph, tmp_path / "all", target=target, dtype=dtype)
    path = tmp_path / "a" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    for f in ("model.onnx", "model.onnx.data", "spec.yaml", "genai_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "model.onnx.data").read_bytes() == (tmp_path / "all" / "model.onnx.data").read_bytes()
    assert (tmp_path / "a" / "genai_config.json").read_bytes() == (tmp_path / "all" / "genai_config.json").read_bytes()
    m = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_value or d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert m.graph.output[0].name == "logits" and dims == ["batch_size", 1, graph.spec.vocab_size]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["archc.logits"] == "last"
    # the head's MatMul (palm: tied to the embedding) reads the Slice of the last position
    producer = {o: n for n in m.graph.node for o in n.output}
    head = [n for n in m.graph.node if n.op_type == "MatMul" and n.name.startswith("head/")]
    assert len(head) == 1 and producer[head[0].input[0]].op_type == "Slice"
    m_all = onnx.load(str(tmp_path / "all" / "model.onnx"), load_external_data=False)
    assert {p.key: p.value for p in m_all.metadata_props}["archc.logits"] == "all"


def test_guard_via_archc_run(pair, capsys, monkeypatch):
    """Forward's full logits at the limit: one line naming the sizes and the fix; one element below runs;
    the `last` model runs at any limit, and so does `archc run` on the `all` model, whose generation feeds
    logits_start = -1 (test_logits_start.py drives an older export without that input into the refusal)."""
    spec, d_all, d_last = pair("llama", "portable")
    argv = ["--prompt-ids", "5,6,7,8,9", "--prompt-ids", "10,11", "--max-new-tokens", "3", "--device", "cpu"]
    n = 2 * 5 * spec.vocab_size
    monkeypatch.setattr(archc.runner.session, "FULL_LOGITS_LIMIT", n)
    with pytest.raises(archc.errors.UserError, match=r"\[batch 2, seq 5, vocab \d+\] .* feed logits_start=-1") as e:
        Session(d_all, device="cpu").forward(np.ones((2, 5), np.int64))
    assert "\n" not in str(e.value) and "smaller batch or prompt" in str(e.value)
    code, out_last, err = run_cli(["run", str(d_last), *argv], capsys)
    assert code == 0, err
    code, out_all, err = run_cli(["run", str(d_all), *argv], capsys)
    assert code == 0, err
    monkeypatch.setattr(archc.runner.session, "FULL_LOGITS_LIMIT", n + 1)
    Session(d_all, device="cpu").forward(np.ones((2, 5), np.int64))
    assert out_all == out_last and len(out_all.split()) == 2


def test_guard_at_the_measured_shape():
    """The real limit at the shape that faulted on the H200: PaLM vocab 256000, batch 16, prompt 2048."""
    s = Session.__new__(Session)
    s.model_dir, s.vocab, s.logits, s.has_logits_start = "out/palm", 256000, "all", True
    assert archc.runner.session.FULL_LOGITS_LIMIT == 2**31
    with pytest.raises(archc.errors.UserError, match=r"\[batch 16, seq 2048, vocab 256000\] = 8,388,608,000"):
        s.check_logits_size(16, 2048)
    s.check_logits_size(4, 2048)  # 2.1e9 < 2**31
    s.check_logits_size(16, 2048, -1)  # what generate feeds
    with pytest.raises(archc.errors.UserError, match=r"seq 1024, vocab 256000"):
        s.check_logits_size(16, 2048, 1024)
    s.has_logits_start = False  # an `all` model exported before logits_start computes every position whatever is asked
    with pytest.raises(archc.errors.UserError, match="re-run `archc compile`"):
        s.check_logits_size(16, 2048, -1)
    s.logits = "last"
    s.check_logits_size(16, 2048)


def test_compile_option_and_printout(tmp_path, capsys):
    sets = [a for s in tiny_sets(SPECS / "gpt2.yaml") for a in ("--set", s)]
    code, out, err = run_cli(["compile", "gpt2", *sets, "-o", str(tmp_path / "m"), "--logits", "last"], capsys)
    assert code == 0, err
    assert "logits last [batch, 1, vocab]" in out
    code, out, err = run_cli(["compile", "gpt2", *sets, "-o", str(tmp_path / "x"), "--logits", "first"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--logits first" in lines[0] and "all, last" in lines[0], err
    assert not (tmp_path / "x").exists()


def test_bench_exports_all_and_its_prefill_runs_past_the_full_logits_limit(tmp_path, monkeypatch):
    """The ort backend exports the contract's `all` for every shape (no `--logits last` fallback): its
    generation feeds logits_start = -1, so a shape whose full prefill logits reach the limit runs, with the
    module's greedy tokens; `ort_logits="last"` (`archc bench --logits last`) still exports the pruned head."""
    from archc.bench.harness import Bench, Shape, ort_model_dir, roofline

    path = SPECS / "llama.yaml"
    graph = archc.compile(archc.loader.load_spec(path, tiny_sets(path)))
    V, D = graph.spec.vocab_size, graph.spec.d_model
    monkeypatch.setattr(archc.runner.session, "FULL_LOGITS_LIMIT", 2 * 9 * V)  # batch 2's full prefill reaches it
    limits = {"copy_bytes_per_s": 1e10, "gemm_flops_per_s": {"fp32": 1e11}}
    for ort_logits, want in ((None, "all"), ("last", "last")):
        b = Bench(graph, dtype="fp32", device="cpu", backends=["torch", "ort"], repeats=1, prefill_repeats=1,
                  work_dir=tmp_path, limits=limits, ort_logits=ort_logits)
        try:
            runs = [b.run(Shape(batch, 9, 4)) for batch in (1, 2)]
        finally:
            b.close()
        for run in runs:
            by = {r["backend"]: r for r in run["backends"]}
            assert by["ort"]["logits"] == want and by["torch"]["logits"] is None
            assert by["ort"]["error"] is None or by["ort"]["error"].startswith("T(4) <= T(1)")
            assert by["ort"]["tokens_agree"] == 4  # fp32: the same greedy tokens as archc's PyTorch module
    exports = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(graph.spec.name))
    assert exports == sorted(ort_model_dir(tmp_path, graph, "portable", "fp32", logits).name for logits in ("all", "last"))
    assert [name.count("-logits-last-") for name in exports] == [0, 1]  # named by a fingerprint (archc.bench.workdir)
    # the prefill floor counts the head on one position per row, as every backend's generation computes it
    c = archc.cost.cost(graph)
    B, P = 2, 9
    every = B * (2 * c.matmul_params * P + c.attention_flops_per_position * P * (P + 1) // 2)
    assert roofline(graph, "fp32", Shape(B, P, 4), limits)["prefill_flops"] == every - B * 2 * D * V * (P - 1)
