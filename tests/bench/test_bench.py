"""CPU smoke tests of the benchmark harness plumbing at tiny size (no timing assertions: speed lives
in benchmarks/), the roofline arithmetic against a hand count, and the HF bridge the `hf` backends
use, against the archc PyTorch module with every parameter randomised (plus a negative control)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import archc
import archc.weights  # noqa: F401 - _random_state reads archc.weights
from archc.bench.harness import Bench, Shape, decode_weight_bytes, parse_backends, roofline
from archc.bench.hf import build_hf_model, hf_equivalent
from archc.cli import main
from archc.errors import UserError
from exporters.torch_module import build_module
from tests.conftest import tiny_sets, SPECS

TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "attention.sharing=gqa", "mlp.d_ff=160", "vocab_size=97",
        "max_seq_len=64", "dtype=float32"]


def _sets(extra=()):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


def _random_state(graph, seed=0):
    """Every parameter random (norm weights and biases too), so a mapping slip cannot hide behind ones/zeros."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in archc.weights.init_state(graph).items()}


def test_bench_cli_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "llama", *_sets(), "--device", "cpu", "--dtype", "fp32", "--prompt-len", "12,20",
                 "--new-tokens", "5", "--backends", "torch,hf-eager", "--repeats", "1", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] == torch.__version__
    assert data["limits"] is None  # no roofline on the CPU (tests/bench/test_bench_cpu_cleanup.py)
    assert [r["prompt_len"] for r in data["runs"]] == [12, 20]
    for run in data["runs"]:
        by = {b["backend"]: b for b in run["backends"]}
        assert set(by) == {"torch", "hf-eager"}
        for b in by.values():  # figures present (their size is not tested: a busy CI CPU makes them noise)
            assert b["prefill_ms"] > 0 and len(b["generate_runs_ms"]) == 1
            assert b["error"] is None or b["error"].startswith("T(5) <= T(1)")
            assert b["frac_decode_roofline"] is None and b["frac_prefill_floor"] is None
        # fp32, same weights: HF's greedy tokens are archc's, all 5 of them
        assert by["hf-eager"]["tokens_agree"] == 5
    assert "decode tok/s" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_backend_that_cannot_run_is_reported_not_fatal():
    graph = archc.compile(archc.loader.load_spec(SPECS / "palm.yaml", tiny_sets(SPECS / "palm.yaml")))
    b = Bench(graph, dtype="fp32", device="cpu", backends=["torch", "hf-eager"], repeats=1, prefill_repeats=1,
              limits={"copy_bytes_per_s": 1e10, "gemm_flops_per_s": {"fp32": 1e11}})
    run = b.run(Shape(1, 8, 3))
    by = {r["backend"]: r for r in run["backends"]}
    assert by["torch"]["prefill_ms"] > 0 and by["hf-eager"]["prefill_ms"] is None
    assert "no Hugging Face model type holds" in by["hf-eager"]["error"]


@pytest.mark.parametrize("argv, needle", [
    (["--backends", "torch,tensorrt"], "unknown backend 'tensorrt'"),
    (["--prompt-len", "60", "--new-tokens", "10"], "exceeds the spec's max_seq_len 64"),
    (["--batch", "0"], "--batch: expected positive integers"),
    (["--dtype", "fp8"], "--dtype: 'fp8'"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "llama", *_sets(), "--device", "cpu", "--backends", "torch", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_parse_backends_aliases():
    assert parse_backends("ort,hf") == ["ort", "hf-eager", "hf-sdpa", "hf-compile"]
    with pytest.raises(UserError):
        parse_backends(",")


def test_roofline_against_hand_count():
    spec = archc.loader.load_spec(SPECS / "llama.yaml", TINY)
    graph = archc.compile(spec)
    D, F, V, L, hd, kvh = 64, 160, 97, 2, 16, 2
    per_layer = D * D * 2 + D * kvh * hd * 2 + 3 * D * F + 2 * D  # q, o; k, v; gate, up, down; two RMSNorms
    weights = L * per_layer + D + V * D  # + final norm + untied head (the embedding table is only indexed)
    assert decode_weight_bytes(graph, 2) == 2 * weights
    limits = {"copy_bytes_per_s": 1e9, "gemm_flops_per_s": {"fp16": 1e18}}  # memory-bound by construction
    B, P, N = 2, 10, 4
    kv_tok = L * 2 * kvh * hd * 2
    steps = [(2 * weights + B * kv_tok * (P + j)) / 1e9 for j in range(1, N)]
    r = roofline(graph, "fp16", Shape(B, P, N), limits)
    assert math.isclose(r["decode_tpot_ms"], 1e3 * sum(steps) / len(steps), rel_tol=1e-12)
    assert math.isclose(r["decode_tok_s"], B / (sum(steps) / len(steps)), rel_tol=1e-12)
    # the projections on every prompt position, the head on the last one only (what generation computes)
    flops = B * (2 * L * (per_layer - 2 * D) * P + 2 * V * D + L * 4 * 4 * hd * P * (P + 1) // 2)
    assert r["prefill_flops"] == flops


def test_tied_head_counts_the_embedding_once_more():
    spec = archc.loader.load_spec(SPECS / "gpt2.yaml", tiny_sets(SPECS / "gpt2.yaml"))
    graph = archc.compile(spec)
    untied = archc.compile(archc.loader.load_spec(SPECS / "gpt2.yaml", tiny_sets(SPECS / "gpt2.yaml") + ["embedding.output=untied"]))
    assert decode_weight_bytes(graph, 4) == decode_weight_bytes(untied, 4)


@pytest.mark.parametrize("family, extra", [("llama", []), ("gpt2", []), ("bloom", ["mlp.d_ff=256"]), ("falcon", [])])
def test_hf_bridge_matches_archc_module(family, extra):
    """The hf backends' model is the archc model: same logits (fp32, left padding) with every
    parameter random."""
    path = SPECS / f"{family}.yaml"
    graph = archc.compile(archc.loader.load_spec(path, tiny_sets(path) + extra))
    state = _random_state(graph)
    ours = build_module(graph, weights=state)
    hf, eq = build_hf_model(graph, state, dtype=torch.float32, device="cpu")
    assert eq.model_type == family
    ids = torch.randint(1, graph.spec.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = {} if family == "bloom" else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        a, _ = ours(ids, attention_mask=mask)
        b = hf(input_ids=ids, attention_mask=mask, **kw).logits.float()
    real = mask.bool()
    assert ((a - b)[real].norm() / a[real].norm()).item() < 1e-4


def test_hf_bridge_negative_control(monkeypatch):
    """Swapping q and k in the mapping must be caught by the comparison above."""
    path = SPECS / "llama.yaml"
    graph = archc.compile(archc.loader.load_spec(path, tiny_sets(path)))
    state = _random_state(graph)
    ours = build_module(graph, weights=state)
    swapped = dict(state)
    for i in range(graph.spec.n_layers):
        q, k = f"layers.{i}.attn.q.weight", f"layers.{i}.attn.k.weight"
        if state[q].shape == state[k].shape:
            swapped[q], swapped[k] = state[k], state[q]
    hf, _ = build_hf_model(graph, swapped, dtype=torch.float32, device="cpu")
    ids = torch.randint(1, graph.spec.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = ours(ids)
        b = hf(input_ids=ids).logits.float()
    assert ((a - b).norm() / a.norm()).item() > 1e-2


@pytest.mark.parametrize("family", ["palm", "glm"])
def test_hf_bridge_refuses_what_no_hf_class_computes(family):
    path = SPECS / f"{family}.yaml"
    graph = archc.compile(archc.loader.load_spec(path, tiny_sets(path)))
    why = hf_equivalent(graph)
    assert isinstance(why, str) and "no Hugging Face model type holds" in why and len(why.splitlines()) == 1


def test_ort_backend_plumbing_on_cpu(tmp_path):
    """The ort backend exports (portable target on the CPU) into --work-dir and generates through
    archc's runner: fp32, the same greedy tokens as archc's PyTorch module."""
    spec = archc.loader.load_spec(SPECS / "llama.yaml", TINY)
    b = Bench(archc.compile(spec), dtype="fp32", device="cpu", backends=["torch", "ort"], repeats=1, prefill_repeats=1,
              work_dir=tmp_path, limits={"copy_bytes_per_s": 1e10, "gemm_flops_per_s": {"fp32": 1e11}})
    run = b.run(Shape(2, 9, 4))
    by = {r["backend"]: r for r in run["backends"]}
    assert by["ort"]["prefill_ms"] > 0 and by["ort"]["tokens_agree"] == 4
    [export] = tmp_path.glob(f"{spec.name}-portable-fp32-*")  # named by a fingerprint of its inputs (archc.bench.workdir)
    assert (export / "model.onnx").exists() and (export / "archc-bench-key.json").exists()


def test_torch_backend_feeds_glm_positions_as_the_runner_does(tmp_path):
    """GLM's generated tokens take block positions (last prompt position, k): the torch backend must feed
    them as archc's runner does, or its "tokens =" column compares two different computations. Same
    fp32 weights: ort and torch agree on every token; with the default positions they do not."""
    path = SPECS / "glm.yaml"
    spec = archc.loader.load_spec(path, tiny_sets(path) + ["dtype=float32"])
    graph = archc.compile(spec)
    b = Bench(graph, dtype="fp32", device="cpu", backends=["ort", "torch"], repeats=1, prefill_repeats=1,
              work_dir=tmp_path, limits={"copy_bytes_per_s": 1e10, "gemm_flops_per_s": {"fp32": 1e11}})
    n = 6
    run = b.run(Shape(2, 9, n))
    by = {r["backend"]: r for r in run["backends"]}
    assert by["torch"]["error"] in (None,) or by["torch"]["error"].startswith("T(")
    assert by["torch"]["tokens_agree"] == n
    # negative control: the module with default positions (block row 0) for the generated tokens
    ids, mask = b.inputs(Shape(2, 9, n))
    ort_tokens = b._backend("ort").generate(ids, mask, n)
    module = b.archc_module()
    with torch.inference_mode():
        logits, past = module(ids, attention_mask=mask, prefix_len=torch.full((2,), 9))
        tok, out = logits[:, -1].argmax(-1, keepdim=True), []
        for _ in range(n):
            out.append(tok)
            mask = torch.cat((mask, mask.new_ones(2, 1)), 1)
            logits, past = module(tok, attention_mask=mask, past_key_values=past, prefix_len=torch.full((2,), 9))
            tok = logits[:, -1].argmax(-1, keepdim=True)
    assert torch.cat(out, 1).tolist() != torch.as_tensor(ort_tokens).tolist()


def test_environment_records_the_commit(monkeypatch):
    """ARCHC_COMMIT names the code where git cannot (a copied tree with a stale .git, as on the GPU
    machine); otherwise git describe, marked -dirty when the files differ from it."""
    from archc.bench.harness import environment

    monkeypatch.setenv("ARCHC_COMMIT", "abc1234")
    assert environment()["archc_commit"] == "abc1234"
    monkeypatch.delenv("ARCHC_COMMIT")
    got = environment()["archc_commit"]
    assert got is None or len(got.split("-")[0]) >= 7
