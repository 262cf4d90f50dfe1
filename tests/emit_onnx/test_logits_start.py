"""logits_start: an `all` model's overridable initializer input (int64 [1], default [0]) that makes the head
compute positions logits_start: only; generation feeds -1 (issue 14).

Oracles: the same model not fed / fed 0 (the contract's full logits, itself checked against the PyTorch
emitter and transformers in test_onnx_export / test_onnx_hf), and archc's PyTorch module run on the same
feeds (an independent emitter), for llama (the cuda target's GroupQueryAttention packed layout included,
on the CPU via fused_fp32) and GLM (prefix mask, 2-D positions), on a left-padded batch in the prefill
and in cached decode steps. generate's tokens are checked against a greedy loop over the PyTorch module.
Negative controls: a Slice that ignores logits_start fails the last-row comparison; forcing generate's
logits_start to 0 changes the prefill logits it observes from [B, 1, V] to [B, S, V]; a model's
position layout read from metadata vs from the input's rank is told apart by a model whose metadata and
rank disagree.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

import torch  # noqa: F401  (a test dependency: fail, never skip, when missing)
import onnxruntime as ort  # noqa: F401

import archc
import archc.runner.session
import archc.runner.steppers
from archc.components import PositionIds
from archc.errors import UserError
from archc.runner import Session
from conftest import run_cli, tiny_spec
from exporters import onnx_lowering_portable as portable
from exporters.onnx_export import export
from ort_steps import rel_err, run_ort, run_torch, session

START = "logits_start"
CASES = [("llama", "portable"), ("llama", "cuda"), ("glm", "portable"), ("glm", "cuda")]
PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]  # left-padded into one batch
TOL = 1e-5  # the same head on fewer rows: only GEMM blocking may differ


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(name, target) -> (spec, dir of the default `all` export), fp32, made once."""
    root = tmp_path_factory.mktemp("logits_start")
    cache = {}

    def get(name, target):
        if (name, target) not in cache:
            spec = tiny_spec(name)
            d = root / f"{name}-{target}"
            export(archc.compile(spec), d, target=target, fused_fp32=True)
            cache[name, target] = (spec, d)
        return cache[name, target]

    return get


def older_export(src, dst):
    """`src` as archc exported models before logits_start and the position-layout metadata: the
    input removed (its initializer stays, a constant 0: every position) and archc.position_ids dropped."""
    shutil.copytree(src, dst)
    m = onnx.load(str(dst / "model.onnx"), load_external_data=False)
    keep = [i for i in m.graph.input if i.name != START]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    props = [p for p in m.metadata_props if p.key != "archc.position_ids"]
    del m.metadata_props[:]
    m.metadata_props.extend(props)
    (dst / "model.onnx").write_bytes(m.SerializeToString(deterministic=True))
    return dst


def start(v: int) -> dict:
    return {START: np.array([v], np.int64)}


# ---- the graph -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target, dtype", [("portable", "fp32"), ("portable", "fp16"), ("cuda", "fp16"), ("cuda", "bf16"),
                                           ("cuda", "fp32")])
def test_an_overridable_initializer_straight_into_the_head_slice(target, dtype, tmp_path):
    graph = archc.compile(tiny_spec("palm"))  # tied head: MatMul on the shared matrix
    export(graph, tmp_path / "all", target=target, dtype=dtype)
    export(graph, tmp_path / "last", target=target, dtype=dtype, logits="last")
    onnx.checker.check_model(str(tmp_path / "all" / "model.onnx"), full_check=True)
    m = onnx.load(str(tmp_path / "all" / "model.onnx"), load_external_data=False)
    inputs = {i.name: i for i in m.graph.input}
    init = {t.name: t for t in m.graph.initializer}
    assert START in inputs and START in init  # ONNX's overridable initializer
    t = inputs[START].type.tensor_type
    assert t.elem_type == onnx.TensorProto.INT64 and [d.dim_value for d in t.shape.dim] == [1]
    assert onnx.numpy_helper.to_array(init[START]).tolist() == [0]
    # the head's MatMul reads a Slice whose starts is the input itself (no arithmetic: the CUDA Slice reads it on the host)
    producer = {o: n for n in m.graph.node for o in n.output}
    head = [n for n in m.graph.node if n.op_type in ("MatMul", "FusedMatMul") and n.name.startswith("head/")]
    assert len(head) == 1
    sl = producer[head[0].input[0]]
    assert sl.op_type == "Slice" and sl.input[1] == START
    axes = onnx.numpy_helper.to_array(init[sl.input[3]])
    assert axes.tolist() == [1]
    assert [n.name for n in m.graph.node if START in n.input] == [sl.name]
    dims = [d.dim_value or d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "logits_sequence_length", graph.spec.vocab_size]
    # --logits last computes one position already: no input
    m_last = onnx.load(str(tmp_path / "last" / "model.onnx"), load_external_data=False)
    assert START not in {i.name for i in m_last.graph.input} | {t.name for t in m_last.graph.initializer}


def test_onnxruntime_lists_it_as_overridable_not_required(model):
    _, d = model("llama", "portable")
    s = session(d)
    assert START not in [i.name for i in s.get_inputs()]
    over = {i.name: i for i in s.get_overridable_initializers()}
    assert list(over) == [START] and over[START].type == "tensor(int64)" and over[START].shape == [1]
    assert Session(d, device="cpu").has_logits_start


# ---- the numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, target", CASES)
def test_last_row_of_the_full_logits(name, target, model):
    spec, d = model(name, target)
    s = session(d)
    kw = dict(steps=2, pads=(0, 2), prompt=5)
    unfed = run_ort(s, spec, **kw)
    zero = run_ort(s, spec, extra=start(0), **kw)
    last = run_ort(s, spec, extra=start(-1), **kw)
    mid = run_ort(s, spec, extra=start(2), **dict(kw, steps=0))  # the prefill (a decode step has no position 2)
    graph = archc.compile(spec)
    from exporters.torch_module import build_module

    ref = run_torch(build_module(graph), graph, **kw)
    (_, c), = mid
    assert c.shape == (2, 3, spec.vocab_size) and rel_err(c, unfed[0][1][:, 2:]) <= TOL  # Python-style: positions 2:
    for i, ((_, a), (_, z), (_, b), (_, r)) in enumerate(zip(unfed, zero, last, ref)):
        S = a.shape[1]
        assert a.shape == (2, S, spec.vocab_size) and S == (5 if i == 0 else 1)
        np.testing.assert_array_equal(a, z)  # not fed == fed 0: the contract
        assert b.shape == (2, 1, spec.vocab_size), (i, b.shape)
        assert rel_err(b[:, 0], a[:, -1]) <= TOL, f"{name}/{target} step {i}"
        assert rel_err(b[:, 0], r[:, -1]) <= 1e-4, f"{name}/{target} step {i} vs the PyTorch emitter"
    if target == "cuda" and name == "llama":  # the packed layout really was in play
        assert "GroupQueryAttention" in s.get_modelmeta().custom_metadata_map["archc.lowering"]


def test_negative_control_a_slice_that_ignores_logits_start(model, tmp_path, monkeypatch):
    """A head Slice that starts at 0 whatever is fed must fail the comparison above."""
    spec, d = model("llama", "portable")
    real = portable.positions_from
    monkeypatch.setattr(portable, "positions_from",  # only the head's Slice: next_token's keeps reading the last position
                        lambda ctx, x, s: real(ctx, x, ctx.const(np.array([0], np.int64)) if s == START else s))
    export(archc.compile(spec), tmp_path / "wrong", target="portable", fused_fp32=True)
    good = run_ort(session(d), spec, extra=start(-1), steps=0)[0][1]
    wrong = run_ort(session(tmp_path / "wrong"), spec, extra=start(-1), steps=0)[0][1]
    assert good.shape == (2, 1, spec.vocab_size) and wrong.shape != good.shape


def test_next_token_reads_the_last_of_what_comes_out(model):
    spec, d = model("glm", "portable")
    s = session(d)
    names = [o.name for o in s.get_outputs()]
    assert "next_token" in names
    # run_ort checks next_token == argmax of the last position of the logits it got, fed or not
    full = run_ort(s, spec, steps=1)
    last = run_ort(s, spec, extra=start(-1), steps=1)
    for (_, a), (_, b) in zip(full, last):
        np.testing.assert_array_equal(a[:, -1].argmax(-1), b[:, 0].argmax(-1))


# ---- the runner ----------------------------------------------------------------------------------

def torch_greedy(spec, prompts, n: int) -> list[list[int]]:
    """Greedy tokens of archc's PyTorch module with its own cache, fed as the runner feeds (left
    padding, positions from the mask, GLM's prompt-as-prefix and block positions)."""
    from exporters.torch_module import build_module, greedy_generate

    graph = archc.compile(spec)
    return greedy_generate(build_module(graph), graph, prompts, n)


class Watch:
    """Records the logits shape of every onnxruntime run a Session makes (numpy feeds and IO binding)."""

    def __init__(self, sess):
        self.sess, self.shapes, self.fed = sess, [], []

    def __getattr__(self, k):
        return getattr(self.sess, k)

    def run(self, names, feeds, *a):
        outs = self.sess.run(names, feeds, *a)
        self.fed.append(None if START not in feeds else int(feeds[START][0]))
        self.shapes.append(tuple(outs[0].shape))
        return outs

    def run_with_iobinding(self, io, *a):
        self.sess.run_with_iobinding(io, *a)
        # the outputs in binding order (the fixed decode binding puts the caches first): logits is the one of rank 3
        self.shapes += [tuple(v.shape()) for v in io.get_outputs() if len(v.shape()) == 3]


# numpy feeds, IO binding (the CUDA path on host buffers), and the fixed decode buffers that CUDA graphs
# capture (shared-cache models only: llama on the cuda target)
STEPPERS = [(n, t, io) for n, t in CASES for io in (None, True)] + [("llama", "cuda", "static")]


@pytest.mark.parametrize("name, target, io_binding", STEPPERS)
def test_generate_feeds_minus_one_and_keeps_its_tokens(name, target, io_binding, model, monkeypatch):
    spec, d = model(name, target)
    s = Session(d, device="cpu", io_binding=io_binding)
    assert (io_binding == "static") <= (s.kv_cache == "shared")
    want = torch_greedy(spec, PROMPTS, 4)
    for greedy_on_device in (True, False):
        s.has_next_token = greedy_on_device  # False: the logits themselves come back and numpy picks
        w = s.sess = Watch(s.sess)
        r = s.generate(PROMPTS, 4)
        assert r.ids == want, (greedy_on_device, r.ids, want)
        assert w.shapes[0] == (2, 1, spec.vocab_size)  # the prefill computed the last position only
        assert all(sh == (2, 1, spec.vocab_size) for sh in w.shapes), w.shapes
        if io_binding is None:
            assert w.fed == [-1] * 4
        s.sess = w.sess
        s._steppers.clear()
    # negative control: generate's logits_start forced to 0 computes the whole prompt, same tokens
    monkeypatch.setattr(archc.runner.steppers, "GENERATE_LOGITS_START", 0)
    s2 = Session(d, device="cpu", io_binding=io_binding)
    w = s2.sess = Watch(s2.sess)
    assert s2.generate(PROMPTS, 4).ids == want
    assert w.shapes[0] == (2, 5, spec.vocab_size)


def test_sampling_is_unchanged(model, tmp_path):
    """Sampling reads the logits: the same draws from an older export (every position) and this one."""
    _, d = model("llama", "portable")
    old = older_export(d, tmp_path / "old")
    kw = dict(top_k=20, top_p=0.95, temperature=2.0, seed=11)
    a, b = Session(d, device="cpu"), Session(old, device="cpu")
    assert a.has_logits_start and not b.has_logits_start
    assert a.generate(PROMPTS, 6, **kw).ids == b.generate(PROMPTS, 6, **kw).ids


def test_forward_full_by_default_and_on_request(model):
    spec, d = model("llama", "portable")
    s = Session(d, device="cpu")
    ids = np.array([[1, 2, 3, 4]])
    full, _ = s.forward(ids)
    assert full.shape == (1, 4, spec.vocab_size)  # scoring: every position
    np.testing.assert_array_equal(s.forward(ids, logits_start=0)[0], full)
    last, _ = s.forward(ids, logits_start=-1)
    assert last.shape == (1, 1, spec.vocab_size) and rel_err(last[:, 0], full[:, -1]) <= TOL


def test_full_logits_guard_only_where_full_logits_are_computed(model, tmp_path, capsys, monkeypatch):
    """At a limit the full prefill reaches: `archc run` (generate, -1) runs; forward with full logits
    is refused with the fix named, forward with -1 runs; an older export (no input) is refused in run."""
    spec, d = model("llama", "portable")
    old = older_export(d, tmp_path / "old")
    argv = ["--prompt-ids", "5,6,7,8,9", "--prompt-ids", "10,11", "--max-new-tokens", "3", "--device", "cpu"]
    monkeypatch.setattr(archc.runner.session, "FULL_LOGITS_LIMIT", 2 * 5 * spec.vocab_size)
    code, out, err = run_cli(["run", str(d), *argv], capsys)
    assert code == 0 and len(out.split()) == 2, err
    s = Session(d, device="cpu")
    with pytest.raises(UserError, match="feed logits_start=-1"):
        s.forward(np.ones((2, 5), np.int64))
    assert s.forward(np.ones((2, 5), np.int64), logits_start=-1)[0].shape == (2, 1, spec.vocab_size)
    code, out_old, err = run_cli(["run", str(old), *argv], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out_old == "" and len(lines) == 1 and "Traceback" not in err, err
    for needle in (f"[batch 2, seq 5, vocab {spec.vocab_size}]", "re-run `archc compile`", "smaller batch or prompt"):
        assert needle in lines[0], lines[0]
    monkeypatch.setattr(archc.runner.session, "FULL_LOGITS_LIMIT", 2 * 5 * spec.vocab_size + 1)
    code, out_old, err = run_cli(["run", str(old), *argv], capsys)
    assert code == 0 and out_old == out, err


# ---- the position layout -------------------------------------------------------------------------

@pytest.mark.parametrize("name, want", [("glm", "glm2d"), ("llama", "flat"), ("bloom", "none")])
def test_position_layout_is_in_the_metadata(name, want, tmp_path):
    graph = archc.compile(tiny_spec(name))
    assert graph.model.position_ids.value == want
    export(graph, tmp_path / "m")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["archc.position_ids"] == want
    assert Session(tmp_path / "m", device="cpu").position_layout is PositionIds(want)


class _In:
    def __init__(self, shape):
        self.shape = shape


def test_position_layout_metadata_wins_and_rank_is_the_fallback():
    rank3, rank2 = {"position_ids": _In(["b", 2, "s"])}, {"position_ids": _In(["b", "s"])}
    # without the key (older exports): the rank rule
    assert archc.runner.session.position_layout({}, rank3) is PositionIds.glm2d
    assert archc.runner.session.position_layout({}, rank2) is PositionIds.flat
    assert archc.runner.session.position_layout({}, {}) is PositionIds.none
    # with it, the record is read, not the rank (a disagreeing pair tells the two rules apart)
    assert archc.runner.session.position_layout({"archc.position_ids": "flat"}, rank3) is PositionIds.flat
    assert archc.runner.session.position_layout({"archc.position_ids": "glm2d"}, rank2) is PositionIds.glm2d
    with pytest.raises(UserError, match="archc.position_ids = 'glm3d'"):
        archc.runner.session.position_layout({"archc.position_ids": "glm3d"}, rank3)


def test_glm_from_rank_without_the_key(model, tmp_path):
    """An older GLM export (no archc.position_ids, no logits_start) still gets 2-D positions and the
    module's tokens."""
    spec, d = model("glm", "portable")
    old = older_export(d, tmp_path / "old")
    meta = session(old).get_modelmeta().custom_metadata_map
    assert "archc.position_ids" not in meta
    s = Session(old, device="cpu")
    assert s.position_layout is PositionIds.glm2d and not s.has_logits_start
    assert s.generate(PROMPTS, 4).ids == torch_greedy(spec, PROMPTS, 4)
