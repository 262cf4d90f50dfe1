"""`archc plan`: figures against hand counts from the published shapes, light (no torch), bad input."""

from __future__ import annotations

import json
import time

from conftest import cli_in_fresh_python


def _plan(*argv: str) -> dict:
    r = cli_in_fresh_python(["plan", *argv, "--json"])
    assert r.codes == [0], r.stderr[-2000:]
    return json.loads(r.stdout)


def _by(plan: dict, strategy: str, tp: int = 1) -> dict:
    return next(s for s in plan["strategies"] if s["strategy"] == strategy and s["tp"] == tp)


# LLaMA-2 70B by hand (Touvron et al. 2023; meta-llama/Llama-2-70b-hf config): per layer q, o 8192x8192,
# k, v 1024x8192, gate, up 28672x8192, down 8192x28672 (sharded by tp), two RMSNorm scales (replicated);
# embedding and untied head 32000x8192 and the final norm (replicated).
D, F, KV, V, L = 8192, 28672, 1024, 32000, 80
SHARDED = 2 * D * D + 2 * KV * D + 3 * F * D
REPLICATED_LAYER = 2 * D
OUTSIDE = 2 * V * D + D


def test_llama2_70b_weights_match_the_published_count_and_shard_by_hand():
    plan = _plan("llama2-70b", "--gpus", "8", "--batch", "8", "--seq-len", "4096", "--dtype", "bfloat16")
    assert _by(plan, "single")["weights"] == 68_976_648_192 * 2  # the released checkpoint's count
    assert L * (SHARDED + REPLICATED_LAYER) + OUTSIDE == 68_976_648_192
    tp8 = _by(plan, "tp", 8)
    assert tp8["weights"] == (L * (SHARDED // 8 + REPLICATED_LAYER) + OUTSIDE) * 2
    fsdp8 = _by(plan, "fsdp")
    assert fsdp8["weights"] == -(-68_976_648_192 // 8) * 2
    hybrid = _by(plan, "fsdp+tp", 2)
    assert hybrid["dp"] == 4 and hybrid["local_batch"] == 2
    assert hybrid["weights"] == -(-(L * (SHARDED // 2 + REPLICATED_LAYER) + OUTSIDE) // 4) * 2
    for row in plan["strategies"]:  # AdamW: two moments in the parameter dtype
        assert row["optimizer"] == 2 * row["weights"] and row["gradients"] == row["weights"]
    # KV cache: 2 x 8 kv heads x 128 x 2 bytes x 80 layers per token, 8 x 4096 tokens, split 8 ways under tp 8
    assert _by(plan, "single")["kv_cache"] == 2 * 8 * 128 * 2 * 80 * 8 * 4096
    assert tp8["kv_cache"] == _by(plan, "single")["kv_cache"] // 8
    assert not _by(plan, "single")["train_fits"] and not _by(plan, "single")["generate_fits"]
    assert fsdp8["generate_fits"]


def test_adafactor_state_is_factored():
    plan = _plan("llama2-70b", "--gpus", "1", "--dtype", "float32", "--set", "training.optimizer.kind=adafactor",
                 "--set", "training.optimizer.lr=0.01")
    per_layer = 2 * (D + D) + 2 * (KV + D) + 3 * (F + D) + 2 * D  # rows + columns of each matrix, whole vectors
    assert _by(plan, "single")["optimizer"] == (L * per_layer + 2 * (V + D) + D) * 4


def test_mqa_kv_heads_are_replicated_and_checkpointing_keeps_less():
    plan = _plan("palm", "--gpus", "4", "--batch", "4", "--seq-len", "2048", "--parallel", "tp", "--parallel", "single",
                 "--checkpointing")
    single, tp4 = _by(plan, "single"), _by(plan, "tp", 4)
    assert tp4["kv_cache"] == single["kv_cache"]  # one K/V head: every rank holds all of it
    assert single["activations_checkpointed"] < single["activations"] / 4
    assert plan["checkpointing"] and single["train_peak"] < single["weights"] * 4 + single["activations"]


def test_plan_is_light_and_closed_form():
    t = time.perf_counter()
    r = cli_in_fresh_python(["plan", "llama", "--gpus", "8", "--set", "n_layers=1000000", "--set", "vocab_size=100000000"])
    assert r.codes == [0], r.stderr[-2000:]
    assert not {"torch", "onnxruntime"} & set(r.heavy), r.heavy
    assert time.perf_counter() - t < 60


def test_falcon_tp_is_refused_with_the_degrees_that_work():
    r = cli_in_fresh_python(["plan", "falcon", "--gpus", "2"])
    assert r.codes == [0]
    assert "not possible tp 2: attention.n_heads=71 is not divisible by --tp 2 (falcon-7b); choose 71 or 1" in r.stdout


def test_bad_input_is_one_line_exit_2():
    for argv, words in (
        (["plan", "llama", "--gpu-memory", "abc"], "--gpu-memory 'abc'"),
        (["plan", "llama", "--gpus", "0"], "--gpus 0"),
        (["plan", "llama", "--parallel", "ddp"], "--parallel 'ddp'"),
        (["plan", "llama", "--seq-len", "999999"], "--seq-len 999999"),
        (["plan", "llama", "--dtype", "int8"], "--dtype 'int8'"),
        (["plan", "llama", "--batch", "0"], "--batch 0"),
    ):
        r = cli_in_fresh_python(argv)
        assert r.codes == [2], (argv, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, (argv, r.stderr)
