"""archc.hf without running models: config -> spec against transformers' own config classes, refusals of
what the spec language cannot express, checkpoint name mapping (legacy prefixes, shards, .bin, buffers),
ALiBi slopes against BLOOM's and MPT's, and the `archc import-hf` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import torch
import transformers

import archc  # noqa: E402
from archc.errors import UserError  # noqa: E402
from archc.hf import SUPPORTED_TYPES, config_to_spec, import_hf, load_weights  # noqa: E402
from archc.loader import load_spec, spec_from_dict  # noqa: E402
from conftest import cli_in_fresh_python  # noqa: E402
from conftest import run_cli as run  # noqa: E402


def _arch(data: dict) -> dict:
    """The architecture part of spec data (no name / description / reference)."""
    return {k: v for k, v in data.items() if k not in ("name", "description", "reference")}


# ---- config -> spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", SUPPORTED_TYPES)
def test_omitted_fields_read_as_transformers_defaults(model_type):
    """A config.json holding only model_type maps like transformers' fully defaulted config class does,
    so each family's defaults table mirrors its transformers configuration class."""
    full = transformers.AutoConfig.for_model(model_type).to_dict()
    assert _arch(config_to_spec({"model_type": model_type})) == _arch(config_to_spec(full))


# Published parameter counts of the released models the config classes default to.
PUBLISHED = {
    "llama": 6_738_415_616,  # huggyllama/llama-7b
    "mistral": 7_241_732_096,  # Mistral-7B-v0.1
    "gpt2": 124_439_808,  # gpt2
    "opt": 125_239_296,  # facebook/opt-125m
    "falcon": 6_921_720_704,  # tiiuae/falcon-7b
    "gpt_neox": 20_554_567_680,  # EleutherAI/gpt-neox-20b
    "phi": 1_418_270_720,  # microsoft/phi-1_5
}


@pytest.mark.parametrize("model_type", sorted(PUBLISHED))
def test_default_configs_give_published_parameter_counts(model_type):
    spec = spec_from_dict(config_to_spec(transformers.AutoConfig.for_model(model_type).to_dict()))
    n = sum(int(torch.Size(shape).numel()) for _, shape, _ in archc.compile(spec).params())
    assert n == PUBLISHED[model_type]


def test_legacy_rope_fields_match_what_transformers_reads():
    legacy = {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 96, "vocab_size": 96, "rotary_pct": 0.5, "rotary_emb_base": 20000}
    hf = transformers.GPTNeoXConfig(**{k: v for k, v in legacy.items() if k != "model_type"}).to_dict()
    ours = config_to_spec(legacy)
    assert _arch(ours) == _arch(config_to_spec(hf))
    assert ours["position"]["theta"] == 20000.0 and ours["position"]["rotary_fraction"] == 0.5
    llama = config_to_spec({"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": None})
    assert llama["position"]["theta"] == 500000.0


def test_family_details():
    gemma = config_to_spec(transformers.GemmaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24).to_dict())
    assert gemma["embedding"]["multiplier"] == "sqrt_d_model" and gemma["norm"]["scale"] == "one_plus_weight"
    assert gemma["mlp"]["activation"] == "geglu_tanh" and gemma["attention"]["head_dim"] == 24
    assert config_to_spec({"model_type": "gemma", "hidden_act": "gelu"})["mlp"]["activation"] == "geglu_tanh"
    opt = config_to_spec({"model_type": "opt", "do_layer_norm_before": False})
    assert opt["norm"]["placement"] == "post" and opt["norm"]["final"] is False
    assert opt["position"] == {"kind": "learned", "offset": 2, "max_positions": 2050}
    assert config_to_spec({"model_type": "opt", "_remove_final_layer_norm": True})["norm"]["final"] is False
    gptj = config_to_spec({"model_type": "gptj"})
    assert gptj["position"]["style"] == "interleaved" and gptj["position"]["rotary_fraction"] == 64 / 256
    assert gptj["embedding"]["head_bias"] is True
    falcon40 = config_to_spec({"model_type": "falcon", "new_decoder_architecture": True, "num_attention_heads": 128,
                               "num_kv_heads": 8, "hidden_size": 8192})
    assert falcon40["attention"]["kv_heads"] == 8 and falcon40["residual"]["parallel_norms"] == "separate"
    seq = config_to_spec({"model_type": "falcon", "parallel_attn": False, "multi_query": False, "num_attention_heads": 64,
                          "hidden_size": 4096})
    assert "residual" not in seq and seq["attention"]["kv_heads"] == 64
    assert config_to_spec({"model_type": "gpt2", "scale_attn_weights": False})["attention"]["softmax_scale"] == 1.0
    assert config_to_spec({"model_type": "mpt", "attn_config": {"softmax_scale": 0.1}})["attention"]["softmax_scale"] == 0.1
    mistral = config_to_spec({"model_type": "mistral", "sliding_window": None})
    assert "sliding_window" not in mistral["attention"]
    qwen = config_to_spec({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 128, "max_window_layers": 0})
    assert qwen["attention"]["sliding_window"] == 128
    assert "sliding_window" not in config_to_spec({"model_type": "qwen2", "sliding_window": 128})["attention"]


REFUSED = [
    ({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_parameters"),
    ({"model_type": "llama", "hidden_act": "quick_gelu"}, "hidden_act"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1,
      "num_hidden_layers": 2}, "layer_types"),
    ({"model_type": "gemma", "use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"model_type": "gpt2", "add_cross_attention": True}, "add_cross_attention"),
    ({"model_type": "phi", "qk_layernorm": True}, "qk_layernorm"),
    ({"model_type": "stablelm", "qk_layernorm": True}, "qk_layernorm"),
    ({"model_type": "falcon", "alibi": True}, "alibi"),
    ({"model_type": "falcon", "multi_query": False, "num_kv_heads": 8}, "num_kv_heads"),
    ({"model_type": "bloom", "apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
    ({"model_type": "mpt", "attn_config": {"clip_qkv": 8.0}}, "clip_qkv"),
    ({"model_type": "mpt", "attn_config": {"qk_ln": True}}, "qk_ln"),
    ({"model_type": "mpt", "attn_config": {"alibi": False}}, "alibi"),
    ({"model_type": "mpt", "attn_config": {"attn_type": "multiquery_attention"}}, "attn_type"),
    ({"model_type": "mpt", "logit_scale": 0.5}, "logit_scale"),
    ({"model_type": "mpt", "attn_config": {"alibi_bias_max": 16}}, "alibi_bias_max"),
    ({"model_type": "mpt", "no_bias": False}, "no_bias"),
    ({"model_type": "mpt", "norm_type": "rmsnorm"}, "norm_type"),
    ({"model_type": "opt", "word_embed_proj_dim": 512}, "word_embed_proj_dim"),
    ({"model_type": "opt", "layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine"),
    ({"model_type": "gpt_neox", "rotary_pct": 0.2, "hidden_size": 64, "num_attention_heads": 4}, "partial_rotary_factor"),
]


@pytest.mark.parametrize("config,field", REFUSED, ids=[f"{c['model_type']}-{f}" for c, f in REFUSED])
def test_inexpressible_config_is_a_user_error_naming_the_field(config, field):
    with pytest.raises(UserError) as e:
        config_to_spec(config)
    msg = str(e.value)
    assert config["model_type"] in msg and field in msg and "\n" not in msg


def test_malformed_values_are_user_errors():
    for bad in ({"model_type": "llama", "rms_norm_eps": "small"}, {"model_type": "llama", "hidden_size": "big"},
                {"model_type": "mpt", "attn_config": [1]}, {"model_type": "gpt_neox", "rope_parameters": 3}):
        with pytest.raises(UserError, match=bad["model_type"]):
            config_to_spec(bad)


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(UserError, match="model_type 't5' is not supported.*llama.*stablelm"):
        config_to_spec({"model_type": "t5"})
    with pytest.raises(UserError, match="no model_type"):
        config_to_spec({"hidden_size": 8})


def test_readme_lists_every_supported_type():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("<!-- BEGIN hf -->"):readme.index("<!-- END hf -->")]
    assert [t for t in SUPPORTED_TYPES if f"| `{t}` |" not in section] == []


def test_alibi_slopes_match_bloom_and_mpt():
    """archc.graph.alibi_slopes against transformers' BLOOM and MPT slopes, powers of two and not."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    from archc.graph import alibi_slopes

    for n in range(1, 72):
        ours = torch.tensor(alibi_slopes(n, 8.0))
        torch.testing.assert_close(ours, _get_alibi_slopes(n, "cpu"), rtol=1e-6, atol=0)
        for max_bias in (4, 8, 16):
            mpt = -build_mpt_alibi_tensor(n, 2, max_bias)[:, 0, 0]  # bias of key 0 seen from key 1 = -slope
            torch.testing.assert_close(torch.tensor(alibi_slopes(n, float(max_bias))), mpt, rtol=1e-6, atol=0)


# ---- checkpoint -> graph weights -----------------------------------------------------------------------


def _tiny(cls_name: str, **kw):
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls_name)(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    return model


GPT2_KW = dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    model = _tiny("GPT2Config", **GPT2_KW)
    model.save_pretrained(d)
    return d, model


def _spec_graph(d: Path):
    return archc.compile(spec_from_dict(config_to_spec(json.loads((d / "config.json").read_text()))))


def test_names_and_shapes_follow_the_graph(gpt2_dir):
    d, model = gpt2_dir
    graph = _spec_graph(d)
    state = load_weights(graph, d)
    assert {k: tuple(v.shape) for k, v in state.items()} == {n: s for n, s, _ in graph.params()}
    sd = model.state_dict()
    torch.testing.assert_close(state["layers.1.mlp.up.weight"], sd["transformer.h.1.mlp.c_fc.weight"].t())
    torch.testing.assert_close(state["layers.0.attn.k.bias"], sd["transformer.h.0.attn.c_attn.bias"][32:64])
    assert "head.weight" not in state  # tied to embed.weight


def _resave(src: Path, dst: Path, rename=lambda k: k, extra: dict | None = None, drop=(), fmt="safetensors"):
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    sd = {rename(k): v.contiguous() for k, v in load_file(str(src / "model.safetensors")).items() if k not in drop}
    sd.update(extra or {})
    if fmt == "safetensors":
        save_file(sd, str(dst / "model.safetensors"))
    else:
        torch.save(sd, dst / "pytorch_model.bin")
    return dst


def test_legacy_prefixes_bin_files_and_buffers_load_the_same(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    graph = _spec_graph(d)
    want = load_weights(graph, d)
    legacy = _resave(d, tmp_path / "legacy", rename=lambda k: k.removeprefix("transformer."), fmt="bin",
                     extra={"h.0.attn.bias": torch.ones(1, 1, 32, 32), "h.0.attn.masked_bias": torch.tensor(-1e4)})
    got = load_weights(graph, legacy)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    shapes = load_weights(graph, legacy, meta=True)  # what import-hf checks: names and shapes, no data
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in want.items()}


@pytest.mark.parametrize("cls_name,kw,prefix", [
    ("GemmaConfig", dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8), "model."),
    ("BloomConfig", dict(vocab_size=96, hidden_size=32, n_layer=1, n_head=4), "transformer."),
    ("GPTNeoXConfig", dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                           tie_word_embeddings=True), "gpt_neox."),
])
def test_base_model_checkpoints_without_prefix(tmp_path, cls_name, kw, prefix):
    """A tied model saved from its base class (GemmaModel, BloomModel, ...) has no prefix and no head."""
    _tiny(cls_name, **kw).save_pretrained(tmp_path / "full")
    base = _resave(tmp_path / "full", tmp_path / "base", rename=lambda k: k.removeprefix(prefix), drop=("lm_head.weight",))
    graph = _spec_graph(tmp_path / "full")
    want, got = load_weights(graph, tmp_path / "full"), load_weights(graph, base)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_sharded_safetensors(tmp_path):
    model = _tiny("LlamaConfig", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    spec, state = import_hf(tmp_path)
    sd = model.state_dict()
    torch.testing.assert_close(state["layers.1.attn.k.weight"], sd["model.layers.1.self_attn.k_proj.weight"])
    torch.testing.assert_close(state["head.weight"], sd["lm_head.weight"])


def test_neox_embed_out_and_falcon_grouped_qkv(tmp_path):
    neox = _tiny("GPTNeoXConfig", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                 num_attention_heads=4)
    neox.save_pretrained(tmp_path / "neox")
    old = _resave(tmp_path / "neox", tmp_path / "neox_old", rename=lambda k: k.replace("lm_head.", "embed_out."))
    g = _spec_graph(old)
    torch.testing.assert_close(load_weights(g, old)["head.weight"], neox.state_dict()["lm_head.weight"])
    # per-head interleaved: rows [head][q|k|v][head_dim]
    qkv = neox.state_dict()["gpt_neox.layers.0.attention.query_key_value.weight"].view(4, 3, 8, 32)
    torch.testing.assert_close(load_weights(g, old)["layers.0.attn.v.weight"], qkv[:, 2].reshape(32, 32))

    falcon = _tiny("FalconConfig", vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                   new_decoder_architecture=True, num_kv_heads=2)
    falcon.save_pretrained(tmp_path / "falcon")
    state = load_weights(_spec_graph(tmp_path / "falcon"), tmp_path / "falcon")
    fused = falcon.state_dict()["transformer.h.0.self_attention.query_key_value.weight"].view(2, 4, 8, 32)
    torch.testing.assert_close(state["layers.0.attn.q.weight"], fused[:, :2].reshape(32, 32))
    torch.testing.assert_close(state["layers.0.attn.k.weight"], fused[:, 2].reshape(16, 32))


def test_unknown_and_missing_tensors_are_named(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    graph = _spec_graph(d)
    extra = _resave(d, tmp_path / "extra", extra={"transformer.h.0.attn.q_norm.weight": torch.ones(8)})
    with pytest.raises(UserError, match=r"no place in the gpt2 spec: transformer\.h\.0\.attn\.q_norm\.weight"):
        load_weights(graph, extra)
    missing = _resave(d, tmp_path / "missing", drop=("transformer.h.1.ln_2.bias",))
    with pytest.raises(UserError, match=r"lacks tensors .*transformer\.h\.1\.ln_2\.bias"):
        load_weights(graph, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(UserError, match="no weights found"):
        load_weights(graph, empty)


def test_checkpoint_of_another_size_is_refused(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    other = tmp_path / "other"
    _tiny("GPT2Config", **dict(GPT2_KW, n_embd=64)).save_pretrained(other)
    (other / "config.json").write_text((d / "config.json").read_text())  # config says 32 wide
    with pytest.raises(UserError, match="does not match its config.json"):
        load_weights(_spec_graph(d), other)


# ---- archc import-hf --------------------------------------------------------------------------------


def test_import_hf_writes_a_valid_spec(gpt2_dir, tmp_path, capsys):
    d, _ = gpt2_dir
    out = tmp_path / "gpt2.yaml"
    rc, stdout, err = run(["import-hf", str(d), "-o", str(out), "--name", "tiny-gpt2"], capsys)
    assert rc == 0, err
    text = out.read_text()
    assert text.startswith("# Imported by `archc import-hf` from ") and "config.json" in text.splitlines()[0]
    spec = load_spec(out)
    assert spec.name == "tiny-gpt2" and spec.d_model == 32 and spec.embedding.output.value == "tied"
    assert "checkpoint matches" in stdout
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    run(["import-hf", str(d), "-o", str(tmp_path / "again.yaml"), "--name", "tiny-gpt2"], capsys)
    assert (tmp_path / "again.yaml").read_bytes() == out.read_bytes()  # deterministic
    rc, _, err = run(["import-hf", str(d), "-o", str(tmp_path)], capsys)  # a directory, not a file
    assert rc == 2 and "is a directory" in err and len(err.strip().splitlines()) == 1


def test_import_hf_errors_exit_2_with_one_line_and_no_file(tmp_path, capsys):
    bad = tmp_path / "t5"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "t5"}))
    out = tmp_path / "out.yaml"
    for argv in (["import-hf", str(bad), "-o", str(out)], ["import-hf", str(tmp_path / "nope"), "-o", str(out)],
                 ["import-hf", str(bad), "-o", str(tmp_path / "no" / "dir.yaml")]):
        rc, _, err = run(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["t5"]


def test_import_hf_of_a_bare_config_does_not_import_torch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "num_hidden_layers": 2}))
    r = cli_in_fresh_python(["import-hf", tmp_path, "-o", tmp_path / "m.yaml"])
    assert r.codes == [0], r.stderr
    assert "torch" not in r.heavy and "transformers" not in r.heavy, "heavy import"
    assert load_spec(tmp_path / "m.yaml").attention.sliding_window == 4096


def test_import_hf_refuses_a_checkpoint_that_does_not_match(gpt2_dir, tmp_path, capsys):
    d, _ = gpt2_dir
    broken = _resave(d, tmp_path / "broken", drop=("transformer.ln_f.weight",))
    out = tmp_path / "x.yaml"
    rc, _, err = run(["import-hf", str(broken), "-o", str(out)], capsys)
    assert rc == 2 and "transformer.ln_f.weight" in err and not out.exists()
