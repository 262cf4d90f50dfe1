"""Proof of correctness against Hugging Face transformers: for every supported model type, a tiny model
built from its transformers config class, every parameter randomised (norm weights and biases too), saved
with save_pretrained, imported with archc (config -> spec -> graph, checkpoint -> graph weights) and run
through the PyTorch emitter. Logits must match transformers' eager fp32 forward to a relative error
max|a - b| / max|b| <= 1e-4 on (a) an unpadded prompt, (b) a left-padded batch with HF-generate
positions, (c) a cached decode (prefill + 3 single-token steps) against transformers' own cached decode.
Negative controls load with a deliberately wrong layout and must fail the same comparison.
"""

from __future__ import annotations

import inspect

import pytest

import torch
import transformers

import archc  # noqa: E402
from archc.hf import config_to_spec, import_hf, load_weights  # noqa: E402
from archc.loader import spec_from_dict  # noqa: E402
from exporters.torch_module import build_module  # noqa: E402

TOL = 1e-4
V, D, H, L, P = 96, 64, 4, 2, 64  # vocab, hidden, heads, layers, positions

# (transformers config class, kwargs): tiny, 2 layers, power-of-2 heads, GQA where the family has it.
CASES = {
    "llama": ("LlamaConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                  num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=P,
                                  attention_bias=True, mlp_bias=True, rope_theta=500.0, rms_norm_eps=1e-5)),
    "mistral": ("MistralConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                      num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=P,
                                      sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                  num_attention_heads=H, num_key_value_heads=1, max_position_embeddings=P,
                                  tie_word_embeddings=True)),
    "qwen2_sliding": ("Qwen2Config", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                          num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=P,
                                          use_sliding_window=True, sliding_window=4, max_window_layers=0)),
    "gemma": ("GemmaConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                  num_attention_heads=H, num_key_value_heads=2, head_dim=24, max_position_embeddings=P)),
    "gpt2": ("GPT2Config", dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P, n_inner=96)),
    "gpt2_unscaled": ("GPT2Config", dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P,
                                         scale_attn_weights=False, tie_word_embeddings=False)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P, multi_query=True)),
    "gpt_bigcode_mha": ("GPTBigCodeConfig", dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P,
                                                 multi_query=False)),
    "gpt_neox": ("GPTNeoXConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                       num_attention_heads=H, max_position_embeddings=P, rotary_pct=0.5)),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                                  num_attention_heads=H, max_position_embeddings=P,
                                                  use_parallel_residual=False)),
    "gptj": ("GPTJConfig", dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P, rotary_dim=8, n_inner=96)),
    "falcon_mqa": ("FalconConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                        multi_query=True, parallel_attn=True, bias=False)),
    "falcon_gqa": ("FalconConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                        new_decoder_architecture=True, num_kv_heads=2, bias=True, ffn_hidden_size=96)),
    "falcon_sequential": ("FalconConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                               multi_query=False, parallel_attn=False, bias=True,
                                               tie_word_embeddings=False)),
    "falcon_gqa_shared_norm": ("FalconConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L,
                                                    num_attention_heads=H, new_decoder_architecture=True, num_kv_heads=2,
                                                    num_ln_in_parallel_attn=1)),
    "bloom_6_heads": ("BloomConfig", dict(vocab_size=V, hidden_size=96, n_layer=L, n_head=6)),  # slopes, non-power-of-2
    "mpt_6_heads": ("MptConfig", dict(vocab_size=V, d_model=96, n_layers=L, n_heads=6, max_seq_len=P)),
    "opt_no_bias_no_final_norm": ("OPTConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L,
                                                    num_attention_heads=H, ffn_dim=96, max_position_embeddings=P,
                                                    enable_bias=False, _remove_final_layer_norm=True)),
    "bloom": ("BloomConfig", dict(vocab_size=V, hidden_size=D, n_layer=L, n_head=H)),
    "mpt": ("MptConfig", dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, max_seq_len=P)),
    "opt": ("OPTConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, ffn_dim=96,
                              max_position_embeddings=P)),
    "opt_post_norm": ("OPTConfig", dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                        ffn_dim=96, max_position_embeddings=P, do_layer_norm_before=False)),
    "phi": ("PhiConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                              num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=P)),
    "stablelm": ("StableLmConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                        num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=P)),
    "stablelm_parallel": ("StableLmConfig", dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                                 num_attention_heads=H, num_key_value_heads=H, max_position_embeddings=P,
                                                 use_parallel_residual=True, use_qkv_bias=True)),
}


def _randomise(model, seed: int = 0) -> None:
    """Every parameter drawn from a seeded normal: matrices at 1/sqrt(fan_in), norm scales around 1, biases small."""
    g = torch.Generator().manual_seed(seed)
    one_plus = type(model).__name__.startswith("Gemma")  # Gemma's RMSNorm scales by (1 + w)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p.shape[-1] ** 0.5 if "embed" not in name and "wte" not in name and "wpe" not in name
                        and "word_embeddings" not in name and "embed_in" not in name else noise * 0.5)
            elif name.endswith("weight") and not one_plus:  # norm scales
                p.copy_(1.0 + 0.2 * noise)
            else:  # biases, Gemma's (1 + w) norm offsets
                p.copy_(0.2 * noise)


def _build_hf(case: str):
    cls_name, kwargs = CASES[case]
    config = getattr(transformers, cls_name)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomise(model)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(HF model, archc module) for one case, imported through save_pretrained + import_hf."""
    case = request.param
    hf = _build_hf(case)
    d = tmp_path_factory.mktemp(case)
    hf.save_pretrained(d, safe_serialization=True)
    spec, state = import_hf(d)
    return case, hf, build_module(archc.compile(spec), weights=state)


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())  # both come from no_grad runs


def _hf_logits(hf, ids, mask=None, pos=None, cache=None):
    kw = {"attention_mask": mask, "use_cache": True}
    if "position_ids" in inspect.signature(hf.forward).parameters and pos is not None:
        kw["position_ids"] = pos
    if cache is not None:
        kw["cache"] = cache
    with torch.no_grad():
        out = hf(ids, **kw)
    return out.logits.float(), out.cache


def _left_padded(batch: int, seq: int, pads: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # what HF generate passes
    return ids, mask, pos


def test_parameter_count(pair):
    case, hf, ours = pair
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()), case


def test_prompt_without_padding(pair):
    case, hf, ours = pair
    ids = torch.randint(0, V, (1, 11), generator=torch.Generator().manual_seed(1))
    ref, _ = _hf_logits(hf, ids)
    with torch.no_grad():
        got, _ = ours(ids)
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= TOL, case


def test_left_padded_batch(pair):
    case, hf, ours = pair
    ids, mask, pos = _left_padded(3, 10, [0, 3, 6], seed=2)
    ref, _ = _hf_logits(hf, ids, mask, pos)
    with torch.no_grad():
        got, _ = ours(ids, attention_mask=mask, position_ids=pos)
    real = mask.bool()
    assert rel_err(got[real], ref[real]) <= TOL, case


def test_cached_decode(pair):
    case, hf, ours = pair
    ids, mask, pos = _left_padded(2, 7, [0, 2], seed=3)
    ref, cache = _hf_logits(hf, ids, mask, pos)
    with torch.no_grad():
        got, present = ours(ids, attention_mask=mask, position_ids=pos)
    assert rel_err(got[mask.bool()], ref[mask.bool()]) <= TOL, case
    g = torch.Generator().manual_seed(4)
    for step in range(3):
        tok = torch.randint(0, V, (2, 1), generator=g)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        ref, cache = _hf_logits(hf, tok, mask, pos, cache)
        with torch.no_grad():
            got, present = ours(tok, attention_mask=mask, position_ids=pos, past_key_values=present)
        assert rel_err(got, ref) <= TOL, f"{case} decode step {step}"


# ------------------------------------------------------------------------------------------------
# Negative controls: the comparison has teeth


def _error_with(hf, graph, state) -> float:
    ids = torch.randint(0, V, (1, 11), generator=torch.Generator().manual_seed(1))
    ref, _ = _hf_logits(hf, ids)
    with torch.no_grad():
        got, _ = build_module(graph, weights=state)(ids)
    return rel_err(got, ref)


def _imported(case: str, tmp_path):
    """(hf model, spec data, graph, weights) for `case`, saved and imported correctly; checked to match
    first, so that a control's miss comes from the one mistake it makes."""
    hf = _build_hf(case)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    data = config_to_spec(hf.config.to_dict())
    graph = archc.compile(spec_from_dict(data))
    state = load_weights(graph, tmp_path)
    assert _error_with(hf, graph, state) <= TOL
    return hf, data, graph, state


def test_negative_control_wrong_rope_style(tmp_path):
    """GPT-NeoX rotates halves; compiled with interleaved RoPE, the same weights must miss by far."""
    hf, data, _, state = _imported("gpt_neox", tmp_path)
    data["position"]["style"] = "interleaved"
    assert _error_with(hf, archc.compile(spec_from_dict(data)), state) > 1e-2


def test_negative_control_untransposed_conv1d(tmp_path):
    """GPT-2's Conv1D weights are [in, out]; loading MLP weights without the transpose must miss by far."""
    hf, _, graph, state = _imported("gpt2", tmp_path)
    wrong = dict(state)
    for i in range(L):  # square c_proj [D, D]: the only Conv1D whose untransposed shape still fits
        wrong[f"layers.{i}.attn.o.weight"] = state[f"layers.{i}.attn.o.weight"].t().contiguous()
    assert _error_with(hf, graph, wrong) > 1e-2


def test_negative_control_fused_qkv_layout(tmp_path):
    """BLOOM's query_key_value is per-head interleaved; reading it as q | k | v blocks must miss by far."""
    hf, _, graph, state = _imported("bloom", tmp_path)
    wrong = dict(state)
    sd = hf.state_dict()
    for i in range(L):
        w = sd[f"transformer.h.{i}.self_attention.query_key_value.weight"]
        b = sd[f"transformer.h.{i}.self_attention.query_key_value.bias"]
        for j, p in enumerate("qkv"):
            wrong[f"layers.{i}.attn.{p}.weight"] = w[j * D:(j + 1) * D].clone()
            wrong[f"layers.{i}.attn.{p}.bias"] = b[j * D:(j + 1) * D].clone()
    assert _error_with(hf, graph, wrong) > 1e-2
