"""`archc compile --quant int4|int8` (block-wise, onnxruntime MatMulNBits; --quant-method rtn|search), proven on the CPU:

(a) onnxruntime's own dequantization (MatMulNBits run on an identity input) equals, bit for bit, a numpy
    dequantizer written here from the operator's specification (not from exporters/quantize.py), for
    int4/int8, symmetric/asymmetric, and a K that leaves an odd number of blocks (zero-point padding);
    and every dequantized weight is within half a step of the weight it came from (round-to-nearest),
    or, --quant-method search, every block's squared error is at most round-to-nearest's;
(b) on a model trained by `archc train`, the logits of the quantized exports stay within stated bounds
    of the fp32 export's;
(c) greedy tokens from `archc run` agree with the fp32 and fp16 exports for a stated number of steps;
(d) negative controls: the numpy dequantizer with the nibbles swapped, or with a wrong zero point,
    does not match onnxruntime, so (a) would catch a packing mistake.
Also: the closed-form quantized size (archc.quant.weight_bytes, what `show`/`diff` print) equals the
bytes the export wrote, the export is deterministic, and the lowering summary names MatMulNBits.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli

TRAIN_SETS = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.sharing=gqa", "attention.kv_heads=2",
              "mlp.d_ff=160", "vocab_size=97", "max_seq_len=64", "training.schedule.warmup_steps=10",
              "training.optimizer.lr=3e-3"]
TRAIN_STEPS = 120
# d_model 80 = 2.5 blocks of 32: three blocks per row, the last one padded, an odd count of zero points
ODD_SETS = ["n_layers=1", "d_model=80", "attention.n_heads=5", "attention.sharing=mqa", "attention.kv_heads=1",
            "mlp.d_ff=96", "vocab_size=64", "max_seq_len=32"]


def sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


# ------------------------------------------------------------------------------------------------
# numpy dequantizer from the com.microsoft MatMulNBits specification (docs/ContribOperators.md):
# B uint8 [N, k_blocks, block_size*bits/8], packed along K, for 4 bits the first value in the lower 4 bits;
# scales [N, k_blocks]; zero_points uint8 [N, ceil(k_blocks*bits/8)] packed the same way, or absent: 2^(bits-1).


def spec_unpack(packed: np.ndarray, bits: int, count: int, *, swap: bool = False) -> np.ndarray:
    """The first `count` values along the last axis of bit-packed bytes."""
    if bits == 8:
        return packed.astype(np.int32)[..., :count]
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.int32)
    lo, hi = packed & 0x0F, packed >> 4
    out[..., 0::2], out[..., 1::2] = (hi, lo) if swap else (lo, hi)
    return out[..., :count]


def spec_dequantize(b, scales, zero_points, n: int, k: int, bits: int, block: int, *, swap: bool = False,
                    zp_shift: int = 0) -> np.ndarray:
    kb = -(-k // block)
    q = spec_unpack(b.reshape(n, kb, -1), bits, block, swap=swap)  # [N, kb, block]
    zp = (np.full((n, kb), 2 ** (bits - 1), np.int32) if zero_points is None
          else spec_unpack(zero_points.reshape(n, -1), bits, kb, swap=swap)) + zp_shift
    s = scales.reshape(n, kb).astype(np.float32)
    w = (q - zp[..., None]).astype(np.float32) * s[..., None]
    return w.reshape(n, kb * block)[:, :k]


def matmulnbits_nodes(model_dir: Path):
    model = onnx.load(str(model_dir / "model.onnx"))  # external data loaded
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            ins = [inits.get(i) if i else None for i in node.input]
            yield node, attrs, ins + [None] * (4 - len(ins))


def ort_dequantized(b, scales, zp, attrs) -> np.ndarray:
    """onnxruntime's dequantized [N, K]: MatMulNBits on A = I_K (each output row is one W column; a sum
    with exact zeros and ones is exact at accuracy_level 0)."""
    n, k = attrs["N"], attrs["K"]
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [k, k])]
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales.astype(np.float32), "scales")]
    names = ["A", "B", "scales"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        names.append("zp")
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", K=k, N=n, bits=attrs["bits"],
                            block_size=attrs["block_size"], accuracy_level=0)
    g = helper.make_graph([node], "deq", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, n])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 21), helper.make_operatorsetid("com.microsoft", 1)], ir_version=10)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"A": np.eye(k, dtype=np.float32)})[0].T


def source_weights(graph, name: str, n: int) -> np.ndarray:
    """The float32 weight a MatMulNBits node was quantized from (its initializer name without .qN; a
    stacked q|k|v or gate|up is the parts concatenated), from the seeded init."""
    from exporters.onnx_weights import weight_source

    get = weight_source(graph, None)
    base = name.rsplit(".q", 1)[0]
    return get(base).numpy() if base in {p for p, _, _ in graph.params()} else None


# ------------------------------------------------------------------------------------------------
# (a) + (d): exact dequantization, negative controls


def block_errors(w: np.ndarray, deq: np.ndarray, block: int) -> np.ndarray:
    """Squared reconstruction error of each block [N, kb] (float64; the last block's padding adds nothing)."""
    n, k = w.shape
    d = np.zeros((n, -(-k // block) * block))
    d[:, :k] = w.astype(np.float64) - deq
    return (d.reshape(n, -1, block) ** 2).sum(-1)


@pytest.mark.parametrize("quant,scheme,method", [("int4", "symmetric", "rtn"), ("int4", "asymmetric", "rtn"), ("int8", "symmetric", "rtn"),
                                                 ("int8", "asymmetric", "rtn"), ("int4", "symmetric", "search"),
                                                 ("int4", "asymmetric", "search"), ("int8", "symmetric", "search")])
def test_dequantized_weights_equal_the_spec_exactly(tmp_path, capsys, quant, scheme, method):
    import archc
    from archc.loader import load_spec

    out = tmp_path / "m"
    rc, _, err = run_cli(["compile", "llama", *sets(ODD_SETS), "-o", str(out), "--quant", quant, "--quant-scheme", scheme,
                          "--quant-method", method], capsys)
    assert rc == 0, err
    graph = archc.compile(load_spec("llama", ODD_SETS))
    rtn = {}
    if method == "search":  # the same weights through round-to-nearest, the bound every block must meet
        rc, _, err = run_cli(["compile", "llama", *sets(ODD_SETS), "-o", str(tmp_path / "rtn"), "--quant", quant,
                              "--quant-scheme", scheme], capsys)
        assert rc == 0, err
        for node, attrs, (_, b, scales, zp) in matmulnbits_nodes(tmp_path / "rtn"):
            rtn[node.input[1]] = spec_dequantize(b, scales, zp, attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"])
    checked = improved = 0
    for node, attrs, (_, b, scales, zp) in matmulnbits_nodes(out):
        n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        assert (bits, block) == ({"int4": 4, "int8": 8}[quant], 32)
        assert (zp is None) == (scheme == "symmetric")
        assert b.dtype == np.uint8 and b.shape == (n, -(-k // block), block * bits // 8)
        mine = spec_dequantize(b, scales, zp, n, k, bits, block)
        theirs = ort_dequantized(b, scales, zp, attrs)
        assert np.array_equal(mine, theirs), node.input[1]
        # round-to-nearest: a weight inside its block's grid lands within half a step of it; one beyond
        # (symmetric: the side opposite the block's largest magnitude reaches 2^(bits-1) - 1 steps only)
        # lands on the grid's end
        w = source_weights(graph, node.input[1], n)
        if w is not None and method == "search":
            # never worse than round-to-nearest, block by block; better somewhere (else it is not searching)
            mine_err, rtn_err = block_errors(w, mine, block), block_errors(w, rtn[node.input[1]], block)
            assert np.all(mine_err <= rtn_err), (node.input[1], float((mine_err - rtn_err).max()))
            improved += int(mine_err.sum() < 0.99 * rtn_err.sum())
        elif w is not None and method == "rtn":
            s = np.repeat(scales.astype(np.float32), block, axis=1)[:, :k]
            zps = np.repeat(np.full(scales.shape, 2 ** (bits - 1)) if zp is None
                            else spec_unpack(zp, bits, scales.shape[1]), block, axis=1)[:, :k]
            ends = np.stack([(0 - zps).astype(np.float32) * s, ((1 << bits) - 1 - zps).astype(np.float32) * s])
            lo, hi = ends.min(0), ends.max(0)
            inside = (w >= lo) & (w <= hi)
            assert np.all(np.abs(w - mine)[inside] <= np.abs(s)[inside] * 0.5 * (1 + 1e-5)), node.input[1]
            assert np.array_equal(mine[~inside], np.clip(w, lo, hi)[~inside]), node.input[1]
        # (d) negative controls: a swapped nibble order or a zero point off by one does not match
        if bits == 4:
            assert not np.array_equal(spec_dequantize(b, scales, zp, n, k, bits, block, swap=True), theirs)
        assert not np.array_equal(spec_dequantize(b, scales, zp, n, k, bits, block, zp_shift=1), theirs)
        checked += 1
    assert checked == 7  # q, k, v, o, gate, up, down of the one layer (portable target); the head stays dense
    # search: a weight's total error at least 1% under round-to-nearest's; measured 7 of 7 for each case here
    assert improved >= (6 if method == "search" else 0), improved


# ------------------------------------------------------------------------------------------------
# size in closed form, determinism, bad options


@pytest.mark.parametrize("target,extra", [("portable", ["--quant", "int4"]), ("cuda", ["--quant", "int8", "--quant-scheme", "asymmetric", "--quant-head"]),
                                          ("portable", ["--quant", "int4", "--quant-head", "--set", "embedding.output=tied"]),
                                          ("cuda", ["--quant", "int4", "--quant-head", "--quant-method", "search"])])
def test_closed_form_size_is_the_written_size_and_bytes_repeat(tmp_path, capsys, target, extra):
    import archc
    from archc.cost import light_graph
    from archc.dtypes import DType
    from archc.loader import load_spec
    from archc.quant import QuantKind, QuantScheme, QuantSettings, weight_bytes

    more_sets = [extra[i + 1] for i, a in enumerate(extra) if a == "--set"]
    flags = [a for i, a in enumerate(extra) if a != "--set" and (i == 0 or extra[i - 1] != "--set")]
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        rc, _, err = run_cli(["compile", "llama", *sets(ODD_SETS + more_sets), "-o", str(out), "--target", target, "--dtype", "fp16", *extra], capsys)
        assert rc == 0, err
        outs.append(out)
    for f in ("model.onnx", "model.onnx.data"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    model = onnx.load(str(outs[0] / "model.onnx"), load_external_data=False)
    written = sum(int({e.key: e.value for e in t.external_data}["length"]) for t in model.graph.initializer
                  if t.data_location == TensorProto.EXTERNAL)
    q = QuantSettings(QuantKind(flags[flags.index("--quant") + 1]),
                      scheme=QuantScheme(flags[flags.index("--quant-scheme") + 1]) if "--quant-scheme" in flags else QuantScheme.symmetric,
                      head="--quant-head" in flags)
    spec = load_spec("llama", ODD_SETS + more_sets)
    assert weight_bytes(archc.compile(spec), DType.float16, q) == written
    assert weight_bytes(light_graph(spec), DType.float16, q) == written
    assert weight_bytes(archc.compile(spec), DType.float16, QuantSettings()) > written  # negative control: dense is larger


@pytest.mark.parametrize("args,words", [
    (["--quant", "int3"], ["--quant int3", "int4"]),
    (["--quant", "int4", "--quant-block-size", "48"], ["--quant-block-size 48", "power of two"]),
    (["--quant", "int4", "--quant-block-size", "8"], ["--quant-block-size 8"]),
    (["--quant", "int4", "--quant-accuracy-level", "5"], ["--quant-accuracy-level 5"]),
    (["--quant", "int4", "--quant-scheme", "nf4"], ["--quant-scheme nf4"]),
    (["--quant", "int4", "--dtype", "bf16"], ["--dtype bf16"]),
    (["--quant", "int4", "--quant-method", "gptq"], ["--quant-method gptq", "rtn", "search"]),
    (["--quant-method", "search"], ["--quant-method search", "--quant int4"]),
])
def test_bad_quant_options_are_one_line(tmp_path, capsys, args, words):
    rc, _, err = run_cli(["compile", "llama", *sets(ODD_SETS), "-o", str(tmp_path / "m"), *args], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------
# (b) + (c): a model trained by `archc train`, its fp32/fp16/int8/int4 exports


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny llama trained on a learnable token stream (`archc train`, CPU), compiled four ways."""
    import pytest as _pytest

    root = tmp_path_factory.mktemp("quant_trained")
    ids = (np.arange(20000) * 7 + np.arange(20000) // 13) % 97
    ids.astype("<u2").tofile(root / "tokens.bin")
    capsys = _NoCapture()
    rc, _, err = run_cli(["train", "llama", *sets(TRAIN_SETS), "--data", str(root / "tokens.bin"), "--out", str(root / "run"),
                          "--batch", "8", "--seq-len", "32", "--steps", str(TRAIN_STEPS), "--eval-every", "0", "--device", "cpu"], capsys)
    if rc != 0:
        _pytest.fail(err)
    dirs = {}
    for label, extra in (("fp32", []), ("fp16", ["--dtype", "fp16"]), ("int8", ["--quant", "int8"]), ("int4", ["--quant", "int4"]),
                         ("int4-asym", ["--quant", "int4", "--quant-scheme", "asymmetric"]),
                         ("int4-search", ["--quant", "int4", "--quant-method", "search"]),
                         ("int4-asym-search", ["--quant", "int4", "--quant-scheme", "asymmetric", "--quant-method", "search"])):
        out = root / label
        rc, _, err = run_cli(["compile", str(root / "run"), "-o", str(out), *extra], capsys)
        if rc != 0:
            _pytest.fail(err)
        dirs[label] = out
    return dirs


class _NoCapture:
    """run_cli wants capsys; a module fixture has none, so output is read from the return of readouterr."""

    def readouterr(self):
        return "", ""


def prefill_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    """float32 logits [B, S, vocab] of one prefill (empty cache) through onnxruntime on the CPU."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    B, S = ids.shape
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = ids
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((B, S), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.broadcast_to(np.arange(S, dtype=np.int64), (B, S)).copy()
        elif i.name.startswith("past_key_values"):
            dt = np.float16 if i.type == "tensor(float16)" else np.float32
            feeds[i.name] = np.zeros((B, i.shape[1], 0, i.shape[3]), dt)
        else:
            raise AssertionError(f"unexpected input {i.name}")
    return sess.run(["logits"], feeds)[0]


def rel_rms_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((a - ref) ** 2).mean() / (ref ** 2).mean()))


def rel_max_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


# max |logits - fp32 logits| / max |fp32 logits| over 4 prompts x 32 positions. Measured on the CPU
# (onnxruntime 1.31, 120 training steps, block 32): fp16 2.1e-4, int8 1.7e-3, int4 2.6e-2, int4
# asymmetric 2.5e-2, int4 search 3.2e-2, int4 asymmetric search 3.0e-2; asserted with a 2.5-3x margin.
# The rms error (sqrt(mean (a - ref)^2 / mean ref^2)) is where search shows: int4 3.85e-2 -> 3.66e-2
# with search, asymmetric 3.71e-2 -> 3.65e-2 (its max error is higher: one position of 128 x 97);
# asserted: search's rms at most 1.03x round-to-nearest's (not guaranteed, unlike the per-block weight
# error; measured 0.95x and 0.98x).
LOGIT_BOUNDS = {"fp16": 6e-4, "int8": 6e-3, "int4": 8e-2, "int4-asym": 8e-2, "int4-search": 8e-2, "int4-asym-search": 8e-2}


@pytest.mark.slow
def test_logits_error_is_bounded(trained):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, (4, 32)).astype(np.int64)
    ref = prefill_logits(trained["fp32"], ids)
    logits = {label: prefill_logits(trained[label], ids) for label in LOGIT_BOUNDS}
    errs = {label: rel_max_err(x, ref) for label, x in logits.items()}
    rms = {label: rel_rms_err(x, ref) for label, x in logits.items()}
    print("relative rms logits error vs fp32:", rms)
    print("relative max logits error vs fp32:", errs)
    for label, bound in LOGIT_BOUNDS.items():
        assert errs[label] <= bound, (label, errs[label])
    assert errs["int8"] < errs["int4"]  # fewer bits, more error: the comparison is sensitive to the quantization
    assert rms["int4-search"] <= 1.03 * rms["int4"] and rms["int4-asym-search"] <= 1.03 * rms["int4-asym"], rms


PROMPTS = ["7,14,21,28", "50,57,64", "3,10,17,24,31,38", "90,0,7"]
NEW_TOKENS = 24


def greedy(model_dir: Path, capsys) -> list[list[int]]:
    rc, out, err = run_cli(["run", str(model_dir), *[a for p in PROMPTS for a in ("--prompt-ids", p)],
                            "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"], capsys)
    assert rc == 0, err
    rows = [[int(t) for t in line.split(",")] for line in out.splitlines() if re.fullmatch(r"\d+(,\d+)*", line.strip())]
    assert len(rows) == len(PROMPTS), out
    return rows


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# Greedy steps (of NEW_TOKENS, per prompt) that agree with the fp32 export. Measured: all 24 of 24 for
# every prompt, for fp16, int8, int4 and int4 asymmetric, round-to-nearest and search; asserted in full.
AGREE_FLOOR = {"fp16": NEW_TOKENS, "int8": NEW_TOKENS, "int4": NEW_TOKENS, "int4-asym": NEW_TOKENS, "int4-search": NEW_TOKENS,
               "int4-asym-search": NEW_TOKENS}


@pytest.mark.slow
def test_greedy_tokens_agree(trained, capsys):
    ref = greedy(trained["fp32"], capsys)
    assert all(len(r) == NEW_TOKENS for r in ref)
    agree = {label: [agreeing_prefix(r, g) for r, g in zip(ref, greedy(trained[label], capsys), strict=True)] for label in AGREE_FLOOR}
    print("greedy steps agreeing with fp32, per prompt:", agree)
    for label, floor in AGREE_FLOOR.items():
        assert min(agree[label]) >= floor, (label, agree[label])


def test_cuda_target_quantizes_the_same_rows(tmp_path, capsys):
    """The cuda target stacks q|k|v and gate|up into one MatMulNBits each; blocks run along K within a row,
    so the stacked export holds the same quantized rows and its logits match the portable export's (both
    fp16, on the CPU kernels) to fp16 accumulation noise (measured 5.4e-4 relative; int8 vs int4, the negative
    control, 9.1e-2)."""
    ids = np.random.default_rng(1).integers(0, 64, (2, 12)).astype(np.int64)
    logits = {}
    for target, quant in (("portable", "int4"), ("cuda", "int4"), ("portable", "int8")):
        out = tmp_path / f"{target}-{quant}"
        rc, _, err = run_cli(["compile", "llama", *sets(ODD_SETS), "-o", str(out), "--target", target, "--dtype", "fp16",
                              "--quant", quant], capsys)
        assert rc == 0, err
        logits[target, quant] = prefill_logits(out, ids)
    same = rel_max_err(logits["cuda", "int4"], logits["portable", "int4"])
    other = rel_max_err(logits["portable", "int8"], logits["portable", "int4"])
    assert same < 5e-3 and other > 4 * same, (same, other)


# ------------------------------------------------------------------------------------------------
# what compile says about the lowering


BARE_MATMUL = re.compile(r"(?<![A-Za-z])MatMul(?![A-Za-z])")


@pytest.mark.parametrize("target,extra,want", [
    ("cuda", ["--dtype", "fp16", "--quant", "int4", "--quant-head", "--quant-block-size", "16"],
     {"layers.0.mlp": "cuda:MatMulNBits int4 sym b16 (gate|up in one GEMM) + Split",
      "head": "cuda:GatherND (back from the packed layout, once) + MatMulNBits int4 sym b16",
      "layers.0.attn": "; projections MatMulNBits int4 sym b16"}),
    ("cuda", ["--dtype", "fp16", "--quant", "int8", "--quant-scheme", "asymmetric"],
     {"layers.0.mlp": "cuda:MatMulNBits int8 asym b32 (gate|up in one GEMM) + Split",
      "head": "cuda:GatherND (back from the packed layout, once) + MatMul",  # the head stays dense without --quant-head
      "layers.0.attn": "; projections MatMulNBits int8 asym b32"}),
    ("portable", ["--quant", "int4"], {"layers.0.mlp": "portable; projections MatMulNBits int4 sym b32",
                                       "layers.0.attn": "portable; projections MatMulNBits int4 sym b32", "head": "portable"}),
    ("cuda", ["--dtype", "fp16"], {"layers.0.mlp": "cuda:MatMul (gate and up, one GEMM each)"}),  # negative control: dense
])
def test_lowering_summary_names_matmulnbits(tmp_path, capsys, target, extra, want):
    """The lowering summary compile prints (from the model's archc.lowering metadata) names the operator the
    quantized projections run as, with bits, scheme and block size; MatMul stays MatMul where the weight is dense."""
    import json

    out = tmp_path / "m"
    rc, printed, err = run_cli(["compile", "llama", *sets(ODD_SETS), "-o", str(out), "--target", target, *extra], capsys)
    assert rc == 0, err
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    lowering = json.loads(meta["archc.lowering"])
    for node, words in want.items():
        assert words in lowering[node], (node, lowering[node])
        assert words in printed, printed
    quantized = "--quant" in extra
    for node in ("layers.0.attn", "layers.0.mlp") + (("head",) if "--quant-head" in extra else ()):
        assert ("MatMulNBits" in lowering[node]) == quantized and not (quantized and BARE_MATMUL.search(lowering[node])), lowering[node]
