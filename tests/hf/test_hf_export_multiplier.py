"""A numeric embedding multiplier equal to sqrt(d_model) exports as Gemma (which scales its embedding
by sqrt(hidden_size), held by transformers as a float32 scalar): the spec's spelling is not what the
model computes, the factor is. Oracle: transformers' GemmaForCausalLM from the exported directory
gives archc's logits. A number that is not sqrt(d_model) in float32 stays refused (no type holds it)."""

from __future__ import annotations

import math

import pytest

import torch
import transformers

import archc
from archc.errors import UserError
from archc.hf import import_hf
from archc.hf.export import export_hf
from archc.loader import spec_from_dict
from exporters.torch_module import build_module

D = 96  # sqrt(96) = 9.797958971132712: not a round number, so a rounding slip shows


def gemma_like(multiplier) -> dict:
    return {"name": "g", "vocab_size": 80, "d_model": D, "n_layers": 2, "max_seq_len": 64, "dtype": "float32",
            "norm": {"kind": "rmsnorm", "eps": 1e-6, "scale": "one_plus_weight"},
            "mlp": {"activation": "geglu_tanh", "d_ff": 128, "bias": False}, "position": {"kind": "rope"},
            "attention": {"n_heads": 4, "kv_heads": 2, "head_dim": 24}, "embedding": {"output": "tied", "multiplier": multiplier}}


def _state(graph) -> dict:
    g = torch.Generator().manual_seed(0)
    return {full: torch.randn(shape, generator=g) * (0.5 if "embed" in full else 1 / shape[-1] ** 0.5 if len(shape) > 1 else 0.2)
            for full, shape, _ in graph.params()}


def test_number_equal_to_sqrt_d_model_exports_as_gemma(tmp_path):
    graph = archc.compile(spec_from_dict(gemma_like(math.sqrt(D))))
    state = _state(graph)
    result = export_hf(graph, tmp_path / "num", state.__getitem__)
    assert result.model_type == "gemma"
    named = export_hf(archc.compile(spec_from_dict(gemma_like("sqrt_d_model"))), tmp_path / "named", state.__getitem__)
    for f in ("config.json", "model.safetensors"):  # the same model, the same files
        assert (tmp_path / "num" / f).read_bytes() == (tmp_path / "named" / f).read_bytes()
    ids = torch.randint(0, 80, (2, 9), generator=torch.Generator().manual_seed(1))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "num", dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        ref = model.eval()(ids).logits
        got = build_module(graph, weights=state)(ids)[0]
    assert float((got - ref).abs().max()) <= 1e-4 and float(ref.abs().max()) > 0.5
    # negative control: archc with the multiplier off by 1% misses transformers by far more than the tolerance
    off = archc.compile(spec_from_dict(gemma_like(math.sqrt(D) * 1.01)))
    with torch.no_grad():
        assert float((build_module(off, weights=state)(ids)[0] - ref).abs().max()) > 1e-3
    spec, back = import_hf(tmp_path / "num")  # and back: Gemma's own spelling, the same factor
    assert spec.embedding.multiplier == "sqrt_d_model" and spec.embedding_multiplier == graph.spec.embedding_multiplier
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("multiplier", [3.0, 9.7979, math.sqrt(D) * (1 + 1e-6)])
def test_other_numbers_are_refused_naming_the_axis(multiplier, tmp_path):
    graph = archc.compile(spec_from_dict(gemma_like(multiplier)))
    with pytest.raises(UserError) as e:
        export_hf(graph, tmp_path / "x", lambda full: None)
    msg = str(e.value)
    assert "embedding.multiplier" in msg and "\n" not in msg and "sqrt_d_model = 9.797959" in msg, msg
    assert not (tmp_path / "x").exists()
