"""ONNX export of imported Hugging Face checkpoints, against transformers itself.

For every model type the importer supports (the tiny randomised cases of tests/hf/test_hf_parity.py):
save_pretrained -> `export(..., weights=HF_DIR)` (config -> spec, checkpoint -> graph weights through
archc.hf) -> onnxruntime on the CPU. Logits must match transformers' eager fp32 forward to 1e-4 on a
left-padded batch with HF-generate positions, then on 2 cached decode steps against transformers' own
cache, for both targets (cuda: fused ops in fp32 on their CPU kernels). The prefill fed logits_start = -1
(what archc's generate feeds) must give transformers' last column, as [batch, 1, vocab].
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import torch
import transformers  # noqa: F401  (a test dependency: fail, never skip, when missing)
import onnxruntime as ort

import archc  # noqa: E402
from archc.hf import config_to_spec, read_config  # noqa: E402
from archc.loader import spec_from_dict  # noqa: E402
from exporters.onnx_export import export  # noqa: E402
from ort_steps import rel_err, session  # noqa: E402
from test_hf_parity import CASES, V, _build_hf, _hf_logits, _left_padded  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    case = request.param
    hf = _build_hf(case)
    d = tmp_path_factory.mktemp(f"hf-{case}")
    hf.save_pretrained(d, safe_serialization=True)
    spec = spec_from_dict(config_to_spec(read_config(d), name=case))
    return case, hf, d, archc.compile(spec)


def _run(sess, ids, mask, pos, past, glm2d=False, logits_start=None):
    names = [i.name for i in sess.get_inputs()]
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **past}
    if logits_start is not None:
        feeds["logits_start"] = np.array([logits_start], np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = pos.numpy()
    out_names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(out_names, sess.run(None, feeds)))
    return outs["logits"], {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}


@pytest.mark.parametrize("target", ["portable", "cuda"])
def test_onnx_matches_transformers(saved, target, tmp_path):
    case, hf, d, graph = saved
    export(graph, tmp_path / "m", target=target, weights=d, fused_fp32=True)
    sess = session(tmp_path / "m")
    spec = graph.spec
    ids, mask, pos = _left_padded(2, 7, [0, 2], seed=3)
    past = {f"past_key_values.{i}.{t}": np.zeros((2, spec.attention.kv_heads, 0, spec.attention.head_dim), np.float32)
            for i in range(spec.n_layers) for t in ("key", "value")}
    ref, cache = _hf_logits(hf, ids, mask, pos)
    last, _ = _run(sess, ids, mask, pos, past, logits_start=-1)
    got, past = _run(sess, ids, mask, pos, past)
    real = mask.bool().numpy()
    assert rel_err(got[real], ref.numpy()[real]) <= TOL, f"{case}/{target} prefill"
    assert last.shape == (2, 1, got.shape[2]) and rel_err(last[:, 0], ref.numpy()[:, -1]) <= TOL, f"{case}/{target} logits_start -1"
    g = torch.Generator().manual_seed(4)
    for step in range(2):
        tok = torch.randint(0, V, (2, 1), generator=g)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        ref, cache = _hf_logits(hf, tok, mask, pos, cache)
        got, past = _run(sess, tok, mask, pos, past)
        assert rel_err(got, ref.numpy()) <= TOL, f"{case}/{target} decode step {step}"


def test_negative_control_wrong_checkpoint(tmp_path):
    """The comparison has teeth: weights of another randomisation of the same config must miss."""
    case = "llama"
    hf = _build_hf(case)
    d = tmp_path / "hf"
    hf.save_pretrained(d, safe_serialization=True)
    graph = archc.compile(spec_from_dict(config_to_spec(read_config(d), name=case)))
    export(graph, tmp_path / "m")  # seeded init, not the checkpoint
    sess = session(tmp_path / "m")
    ids, mask, pos = _left_padded(1, 6, [0], seed=1)
    spec = graph.spec
    past = {f"past_key_values.{i}.{t}": np.zeros((1, spec.attention.kv_heads, 0, spec.attention.head_dim), np.float32)
            for i in range(spec.n_layers) for t in ("key", "value")}
    ref, _ = _hf_logits(hf, ids, mask, pos)
    got, _ = _run(sess, ids, mask, pos, past)
    assert rel_err(got, ref.numpy()) > 1e-2


def test_compile_command_takes_a_hugging_face_directory(tmp_path, capsys):
    """`archc compile HF_DIR -o OUT`: spec from config.json, weights from the checkpoint."""
    from conftest import run_cli

    hf = _build_hf("gpt2")
    d = tmp_path / "hf"
    hf.save_pretrained(d, safe_serialization=True)
    graph = archc.compile(spec_from_dict(config_to_spec(read_config(d), name="hf")))
    export(graph, tmp_path / "direct", weights=d)
    # GPT2Config keeps GPT-2's bos/eos 50256 at vocab_size 96: ids compile would carry into genai_config.json
    # are refused (one line naming the file and field, before any work), then the same with ids in the vocabulary
    code, _, err = run_cli(["compile", str(d), "-o", str(tmp_path / "cli")], capsys)
    assert code == 2 and f"{d / 'generation_config.json'}: bos_token_id: token id 50256 is past" in err, err
    assert not (tmp_path / "cli").exists()
    for name in ("config.json", "generation_config.json"):
        data = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(dict(data, bos_token_id=V - 1, eos_token_id=V - 1)))
    code, _, err = run_cli(["compile", str(d), "-o", str(tmp_path / "cli")], capsys)
    assert code == 0, err
    assert (tmp_path / "cli" / "model.onnx.data").read_bytes() == (tmp_path / "direct" / "model.onnx.data").read_bytes()
