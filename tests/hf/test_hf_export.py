"""`archc export-hf` proven against transformers: for a spec of each of the 14 model types, every graph
parameter randomised (norm scales and biases too), the exported directory loaded with transformers'
from_pretrained (classes built from config.json, no downloads) gives the PyTorch emitter's logits (fp32,
atol 1e-4), and import-hf of the output gives back the same spec axes and bit-identical tensors.
Negative controls (swapped q/k, a missing RoPE permutation, an untransposed Conv1D) must fail the same
check. Then the command: refusals, the output directory rules, interruption, sources and tokenizers."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import torch
import transformers

import archc
import archc.loader
from archc.hf import SUPPORTED_TYPES, import_hf
from archc.hf.export import _architecture, export_hf, hf_config
from archc.loader import spec_from_dict
from conftest import ROOT, cli_in_fresh_python, run_cli
from exporters.torch_module import build_module

ATOL = 1e-4
V, D, L, P = 96, 64, 2, 64


def _spec(name: str, **sections) -> dict:
    base = {"name": name, "vocab_size": V, "d_model": D, "n_layers": L, "max_seq_len": P, "dtype": "float32",
            "attention": {"n_heads": 4}}
    base.update(sections)
    return base


# One spec per model type, each with the axes that make that type (and no earlier one) the automatic choice.
CASES = {
    "llama": _spec("t-llama", norm={"kind": "rmsnorm", "eps": 1e-5}, mlp={"activation": "swiglu", "d_ff": 96, "bias": True},
                   position={"kind": "rope", "theta": 500.0},
                   attention={"n_heads": 4, "kv_heads": 2, "qkv_bias": True, "out_bias": True}),
    "mistral": _spec("t-mistral", norm={"kind": "rmsnorm"}, mlp={"activation": "swiglu", "d_ff": 96, "bias": False},
                     position={"kind": "rope"}, attention={"n_heads": 4, "kv_heads": 2, "sliding_window": 5}),
    "qwen2": _spec("t-qwen2", norm={"kind": "rmsnorm"}, mlp={"activation": "swiglu", "d_ff": 96, "bias": False},
                   position={"kind": "rope", "theta": 1e6}, attention={"n_heads": 4, "kv_heads": 1, "qkv_bias": True},
                   embedding={"output": "tied"}),
    "gemma": _spec("t-gemma", norm={"kind": "rmsnorm", "eps": 1e-6, "scale": "one_plus_weight"},
                   mlp={"activation": "geglu_tanh", "d_ff": 96, "bias": False}, position={"kind": "rope"},
                   attention={"n_heads": 4, "kv_heads": 2, "head_dim": 24}, embedding={"output": "tied", "multiplier": "sqrt_d_model"}),
    "gpt2": _spec("t-gpt2", mlp={"activation": "gelu_tanh", "d_ff": 96}, position={"kind": "learned"},
                  attention={"n_heads": 4, "qkv_bias": True, "out_bias": True}, embedding={"output": "tied"}),
    "gpt_bigcode": _spec("t-bigcode", mlp={"activation": "gelu_tanh"}, position={"kind": "learned"},
                         attention={"n_heads": 4, "kv_heads": 1, "qkv_bias": True, "out_bias": True}, embedding={"output": "untied"}),
    "gpt_neox": _spec("t-neox", mlp={"activation": "gelu", "d_ff": 96}, position={"kind": "rope", "rotary_fraction": 0.5, "theta": 2e4},
                      attention={"n_heads": 4, "qkv_bias": True, "out_bias": True},
                      residual={"layout": "parallel", "parallel_norms": "separate"}),
    "gptj": _spec("t-gptj", mlp={"activation": "gelu_tanh", "d_ff": 96},
                  position={"kind": "rope", "style": "interleaved", "rotary_dim": 8},
                  residual={"layout": "parallel", "parallel_norms": "shared"}, embedding={"head_bias": True}),
    "falcon": _spec("t-falcon", mlp={"activation": "gelu", "d_ff": 96, "bias": False}, position={"kind": "rope"},
                    attention={"n_heads": 4, "kv_heads": 1}, residual={"layout": "parallel", "parallel_norms": "shared"},
                    embedding={"output": "tied"}),
    "bloom": _spec("t-bloom", mlp={"activation": "gelu_tanh"}, position={"kind": "alibi"},
                   attention={"n_heads": 4, "qkv_bias": True, "out_bias": True},
                   embedding={"output": "tied", "norm": "layernorm"}),
    "mpt": _spec("t-mpt", norm={"kind": "layernorm", "bias": False}, mlp={"activation": "gelu", "bias": False},
                 position={"kind": "alibi"}, attention={"n_heads": 4}, embedding={"output": "tied"}),
    "opt": _spec("t-opt", norm={"kind": "layernorm", "placement": "post"}, mlp={"activation": "relu", "d_ff": 96},
                 position={"kind": "learned", "offset": 2}, attention={"n_heads": 4, "qkv_bias": True, "out_bias": True},
                 embedding={"output": "tied"}),
    "phi": _spec("t-phi", mlp={"activation": "gelu_tanh", "d_ff": 96}, position={"kind": "rope", "rotary_fraction": 0.5},
                 attention={"n_heads": 4, "kv_heads": 2, "qkv_bias": True, "out_bias": True},
                 residual={"layout": "parallel", "parallel_norms": "shared"}, embedding={"head_bias": True}),
    "stablelm": _spec("t-stablelm", mlp={"activation": "swiglu", "d_ff": 96, "bias": False},
                      position={"kind": "rope", "rotary_fraction": 0.25}, attention={"n_heads": 4, "kv_heads": 2, "qkv_bias": True}),
}
assert sorted(CASES) == sorted(SUPPORTED_TYPES)


def randomised_state(graph, seed: int = 0) -> dict:
    """Every owned parameter drawn: matrices at 1/sqrt(fan_in), embeddings at 0.5, norm scales around 1
    (Gemma's (1 + w) offsets around 0), biases small; nothing left at a value a mapping slip would preserve."""
    g = torch.Generator().manual_seed(seed)
    one_plus = graph.spec.norm.scale.value == "one_plus_weight"
    out = {}
    for full, shape, node in graph.params():
        noise = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            out[full] = noise * 0.5 if "embed" in node else noise / shape[-1] ** 0.5
        elif full.endswith("weight") and not one_plus:
            out[full] = 1.0 + 0.2 * noise
        else:
            out[full] = 0.2 * noise
    return out


def _hf_logits(out_dir: Path, ids, mask=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
    kw = {"attention_mask": mask}
    if mask is not None and "position_ids" in inspect.signature(model.forward).parameters:
        kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # what archc derives from the mask
    with torch.no_grad():
        return model.eval()(ids, **kw).logits.float()


def _archc_logits(graph, state, ids, mask=None):
    with torch.no_grad():
        return build_module(graph, weights=state)(ids, attention_mask=mask)[0]


IDS = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
MASK = torch.ones(2, 12, dtype=torch.long)
MASK[1, :4] = 0  # a left-padded row: positions from the mask, on both sides


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(model type, graph, randomised graph state, exported directory), the type chosen automatically."""
    model_type = request.param
    graph = archc.compile(spec_from_dict(CASES[model_type]))
    state = randomised_state(graph)
    out = tmp_path_factory.mktemp(model_type) / "hf"
    result = export_hf(graph, out, state.__getitem__)
    assert result.model_type == model_type  # the automatic choice
    return model_type, graph, state, out


def test_transformers_gives_archcs_logits(exported):
    model_type, graph, state, out = exported
    ref = _hf_logits(out, IDS, MASK)
    got = _archc_logits(graph, state, IDS, MASK)
    real = MASK.bool()
    assert got.shape == ref.shape
    assert float((got[real] - ref[real]).abs().max()) <= ATOL, model_type
    assert float(ref.abs().max()) > 0.5  # logits of a size where a slip shows


def test_import_of_the_export_round_trips(exported):
    model_type, graph, state, out = exported
    spec, back = import_hf(out)
    assert _architecture(spec.to_yaml_dict()) == _architecture(graph.spec.to_yaml_dict()), model_type
    assert spec.dtype == graph.spec.dtype and spec.init.std == graph.spec.init.std
    assert sorted(back) == sorted(state)
    for name, t in state.items():
        assert torch.equal(back[name], t), name  # bit-identical


# ---- RoPE pairing across types ----------------------------------------------------------------------


INTERLEAVED_LLAMA = dict(CASES["llama"], position={"kind": "rope", "theta": 500.0, "style": "interleaved"})
HALF_GPTJ = dict(CASES["gptj"], position={"kind": "rope", "style": "half", "rotary_dim": 8})


@pytest.mark.parametrize("data, model_type", [(INTERLEAVED_LLAMA, "llama"), (HALF_GPTJ, "gptj"),
                                              (dict(CASES["gpt_neox"], position={"kind": "rope", "rotary_fraction": 0.5,
                                                                                  "style": "interleaved"}), "gpt_neox")])
def test_other_rope_pairing_is_held_by_a_row_permutation(data, model_type, tmp_path):
    graph = archc.compile(spec_from_dict(data))
    state = randomised_state(graph)
    assert export_hf(graph, tmp_path / "hf", state.__getitem__).model_type == model_type
    assert float((_hf_logits(tmp_path / "hf", IDS) - _archc_logits(graph, state, IDS)).abs().max()) <= ATOL
    _, back = import_hf(tmp_path / "hf")  # imported as the type's own pairing: other weights, same function
    imported = archc.compile(spec_from_dict(dict(data, position=dict(data["position"], style=spec_style(model_type)))))
    assert float((_archc_logits(imported, back, IDS) - _archc_logits(graph, state, IDS)).abs().max()) <= ATOL


def spec_style(model_type: str) -> str:
    return "interleaved" if model_type == "gptj" else "half"


# ---- negative controls: the logits check has teeth --------------------------------------------------


def _error_after(tmp_path, data, edit=None, monkey=None) -> float:
    graph = archc.compile(spec_from_dict(data))
    state = randomised_state(graph)
    export_hf(graph, tmp_path / "hf", state.__getitem__)
    if edit is not None:
        from safetensors.torch import load_file, save_file

        f = tmp_path / "hf" / "model.safetensors"
        tensors = load_file(f)
        edit(tensors)
        save_file(tensors, f, metadata={"format": "pt"})
    return float((_hf_logits(tmp_path / "hf", IDS) - _archc_logits(graph, state, IDS)).abs().max())


def test_negative_control_swapped_q_and_k(tmp_path):
    mha = dict(CASES["llama"], attention={"n_heads": 4, "qkv_bias": True, "out_bias": True})

    def swap(t):
        for i in range(L):
            q, k = f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.k_proj.weight"
            t[q], t[k] = t[k], t[q]

    assert _error_after(tmp_path, mha) <= ATOL
    assert _error_after(tmp_path / "x", mha, swap) > 1e-2


def test_negative_control_missing_rope_permutation(tmp_path, monkeypatch):
    """An interleaved spec written to llama without the q/k row permutation must miss by far."""
    assert _error_after(tmp_path, INTERLEAVED_LLAMA) <= ATOL
    import archc.hf.llama as llama

    monkeypatch.setattr(llama, "rotary_rows", lambda spec, native, layout=None, **kw: layout)
    assert _error_after(tmp_path / "x", INTERLEAVED_LLAMA) > 1e-2


def test_negative_control_untransposed_conv1d(tmp_path):
    def untranspose(t):
        for i in range(L):
            name = f"transformer.h.{i}.attn.c_proj.weight"  # square: the untransposed tensor still loads
            t[name] = t[name].t().contiguous()

    assert _error_after(tmp_path, CASES["gpt2"], untranspose) > 1e-2


def test_negative_control_fused_qkv_as_blocks(tmp_path):
    """GPT-NeoX's query_key_value is per-head interleaved; written as q | k | v blocks it must miss."""
    def as_blocks(t):
        for i in range(L):
            name = f"gpt_neox.layers.{i}.attention.query_key_value.weight"
            w = t[name].reshape(4, 3, 16, D)
            t[name] = w.transpose(0, 1).reshape(3 * D, D).contiguous()

    assert _error_after(tmp_path, CASES["gpt_neox"], as_blocks) > 1e-2


# ---- what a type cannot hold ------------------------------------------------------------------------


REFUSED = [  # (spec data, --model-type or None, the axis the one-line refusal must name)
    (CASES["llama"], "gpt2", "norm.kind"),
    (dict(CASES["llama"], attention={"n_heads": 4, "qkv_bias": True, "out_bias": False}), "llama", "attention.out_bias"),
    (dict(CASES["mistral"], attention={"n_heads": 4, "sliding_window": 5}), "llama", "attention.sliding_window"),
    (CASES["gpt_neox"], "phi", "residual.parallel_norms"),
    (dict(CASES["gptj"], position={"kind": "rope", "style": "interleaved", "rotary_dim": 8, "theta": 500.0}), "gptj",
     "position.theta"),
    (dict(CASES["bloom"], mlp={"activation": "gelu_tanh", "d_ff": 96}), "bloom", "mlp.d_ff"),
    (dict(CASES["opt"], norm={"kind": "layernorm", "placement": "post", "eps": 1e-6}), "opt", "norm.eps"),
    (_spec("t-glm", position={"kind": "glm2d"}), None, "position.kind"),
    (dict(CASES["llama"], norm={"kind": "rmsnorm", "placement": "sandwich"}), None, "norm.placement"),
    (dict(CASES["gpt2"], embedding={"output": "tied", "head_bias": True}), "gpt2", "embedding.head_bias"),
]


@pytest.mark.parametrize("data, model_type, axis", REFUSED, ids=[f"{m}-{a}" for _, m, a in REFUSED])
def test_refusal_names_the_axis(data, model_type, axis, tmp_path, capsys):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(data))
    argv = ["export-hf", str(spec_file), "-o", str(tmp_path / "out")] + (["--model-type", model_type] if model_type else [])
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and axis in err, err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_library_specs_that_fit_a_type():
    """Library specs go to the type that holds them; the others are refused naming an axis."""
    from conftest import tiny_spec

    chosen = {name: hf_config(tiny_spec(name))[0].model_type for name in ("llama", "mistral", "gemma", "gpt2", "gpt-neox",
                                                                           "falcon", "llama2-70b")}
    assert chosen == {"llama": "llama", "mistral": "mistral", "gemma": "gemma", "gpt2": "gpt2", "gpt-neox": "gpt_neox",
                      "falcon": "falcon", "llama2-70b": "llama"}


# ---- the command ------------------------------------------------------------------------------------


TINY = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
        "--set", "vocab_size=100", "--set", "max_seq_len=64"]


def test_cli_seeded_spec_loads_in_transformers_and_is_deterministic(tmp_path, capsys):
    rc, out, err = run_cli(["export-hf", "llama", *TINY, "--dtype", "float32", "-o", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    assert "model_type llama" in out
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    from archc.commands.common import load

    graph = archc.compile(load("llama", TINY[1::2] + ["dtype=float32"]))
    assert float((_hf_logits(tmp_path / "a", IDS) - _archc_logits(graph, None, IDS)).abs().max()) <= ATOL
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == ["LlamaForCausalLM"]
    assert run_cli(["export-hf", "llama", *TINY, "--dtype", "float32", "-o", str(tmp_path / "b")], capsys)[0] == 0
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cli_default_dtype_is_the_specs(tmp_path, capsys):
    assert run_cli(["export-hf", "llama", *TINY, "-o", str(tmp_path / "a")], capsys)[0] == 0  # llama.yaml: float16
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "float16"


def test_cli_existing_directory_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc, _, err = run_cli(["export-hf", "llama", *TINY, "-o", str(out)], capsys)
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert run_cli(["export-hf", "llama", *TINY, "-o", str(out), "--force"], capsys)[0] == 0
    assert (out / "config.json").exists() and not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(["export-hf", "llama", *TINY, "-o", str(tmp_path / "file"), "--force"], capsys)
    assert rc == 2 and "not a directory" in err and (tmp_path / "file").read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["export-hf", "llama", *TINY, "-o", str(empty)], capsys)[0] == 0  # an empty directory is free


def test_interrupted_export_leaves_nothing(tmp_path):
    graph = archc.compile(spec_from_dict(CASES["llama"]))
    state = randomised_state(graph)
    with pytest.raises(RuntimeError, match="simulated"):
        export_hf(graph, tmp_path / "out", state.__getitem__, _fail_after=5)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a").write_text("a")
    with pytest.raises(KeyboardInterrupt):
        export_hf(graph, tmp_path / "old", lambda full: (_ for _ in ()).throw(KeyboardInterrupt()), force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"] and (tmp_path / "old" / "a").read_text() == "a"


def _train_dir(tmp_path: Path, data: dict) -> tuple[Path, dict]:
    """A directory shaped like `archc train`'s output: spec.yaml, tokenizer.json, checkpoints/latest."""
    from safetensors.torch import save_file

    d = tmp_path / "run"
    ck = d / "checkpoints" / "step-00000002"
    ck.mkdir(parents=True)
    (d / "spec.yaml").write_text(json.dumps(data))
    graph = archc.compile(spec_from_dict(data))
    state = randomised_state(graph, seed=3)
    save_file(state, str(ck / "model.safetensors"))
    old = d / "checkpoints" / "step-00000001"
    old.mkdir()
    save_file(randomised_state(graph, seed=4), str(old / "model.safetensors"))
    (d / "checkpoints" / "latest").write_text("step-00000002\n")
    tok = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<s>"},
                                              {"id": 2, "content": "</s>"}],
           "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3}, "unk_token": "<pad>"}}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return d, state


def test_cli_train_directory_with_tokenizer(tmp_path, capsys):
    run, state = _train_dir(tmp_path, CASES["stablelm"])
    rc, out, err = run_cli(["export-hf", str(run), "-o", str(tmp_path / "hf")], capsys)
    assert rc == 0, err
    assert "tokenizer.json" in out and (tmp_path / "hf" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text()) == {
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 2
    _, back = import_hf(tmp_path / "hf")
    assert all(torch.equal(back[k], v) for k, v in state.items())  # the latest checkpoint, not the older one
    rc, _, err = run_cli(["export-hf", str(run), "-o", str(run), "--force"], capsys)
    assert rc == 2 and "input" in err  # never onto its own input
    rc, _, err = run_cli(["export-hf", str(run), "-o", str(tmp_path), "--force"], capsys)
    assert rc == 2 and "input" in err and (run / "spec.yaml").exists()


def test_cli_compiled_directory_reads_the_onnx_weights(tmp_path, capsys):
    """An `archc compile` directory's weights come back from model.onnx.data bit for bit (cuda target:
    q|k|v and gate|up stacked, transposed), here compiled from a safetensors file of random weights."""
    from safetensors.torch import save_file

    data = CASES["llama"]
    (tmp_path / "s.yaml").write_text(json.dumps(data))
    graph = archc.compile(spec_from_dict(data))
    state = randomised_state(graph, seed=7)
    save_file(state, str(tmp_path / "w.safetensors"))
    for target in ("portable", "cuda"):
        c = tmp_path / f"c-{target}"
        assert run_cli(["compile", str(tmp_path / "s.yaml"), "-o", str(c), "--weights", str(tmp_path / "w.safetensors"),
                        "--target", target], capsys)[0] == 0
        rc, out, err = run_cli(["export-hf", str(c), "-o", str(tmp_path / f"hf-{target}")], capsys)
        assert rc == 0, err
        _, back = import_hf(tmp_path / f"hf-{target}")
        assert all(torch.equal(back[k], v) for k, v in state.items()), target


def test_cli_argument_errors_before_torch(tmp_path):
    r = cli_in_fresh_python(["export-hf", "llama", "-o", tmp_path / "o", "--dtype", "fp8"])
    assert r.codes == [2], r.stderr
    assert "torch" not in r.heavy, "torch imported before the argument check"
    assert "--dtype fp8" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_hf_directory_is_refused(tmp_path, capsys):
    (tmp_path / "hfdir").mkdir()
    (tmp_path / "hfdir" / "config.json").write_text("{}")
    rc, _, err = run_cli(["export-hf", str(tmp_path / "hfdir"), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "Hugging Face model directory already" in err


def test_cli_real_train_run(tmp_path, capsys):
    """The output of `archc train` (text data, its byte tokenizer) exports, loads in transformers with the
    trained weights' logits, and carries the tokenizer the run was trained with."""
    from safetensors.torch import load_file

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    sets = [a for s in ("n_layers=2", "d_model=32", "attention.n_heads=4", "mlp.d_ff=64", "vocab_size=256",
                        "max_seq_len=32", "dtype=float32") for a in ("--set", s)]
    rc, _, err = run_cli(["train", "llama", *sets, "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"),
                          "--steps", "2", "--batch", "2", "--seq-len", "16", "--device", "cpu", "--eval-every", "0"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["export-hf", str(tmp_path / "run"), "-o", str(tmp_path / "hf")], capsys)
    assert rc == 0, err
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    state = load_file(str(tmp_path / "run" / "checkpoints" / latest / "model.safetensors"))
    graph = archc.compile(archc.loader.load_spec(tmp_path / "run" / "spec.yaml"))
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    assert float((_hf_logits(tmp_path / "hf", ids) - _archc_logits(graph, state, ids)).abs().max()) <= ATOL
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "run" / "tokenizer.json").read_bytes()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    assert tok.decode(tok("fox")["input_ids"]) == "fox"


def test_sigterm_during_export_leaves_nothing(tmp_path):
    """SIGTERM while the checkpoint is being written: the command unwinds as on Ctrl-C, no temporary
    directory and no output are left."""
    import signal
    import time

    argv = [sys.executable, "-m", "archc.cli", "export-hf", "llama", "--set", "n_layers=1", "--set", "vocab_size=1000",
            "-o", str(tmp_path / "out")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.startswith(".out.") for p in tmp_path.iterdir()), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_hf_checkpoint_survives_import_then_export(tmp_path):
    """Every configuration of tests/hf/test_hf_parity.py (26 variants of the 14 types: Falcon's three block
    forms, BigCode MHA and MQA, OPT post-norm and bias-free, sliding windows, ...): a transformers model
    saved, imported with import_hf and exported again is the same model type and gives the original
    model's logits, with nothing but the written config.json and safetensors in between."""
    from test_hf_parity import CASES as HF_CASES
    from test_hf_parity import _build_hf

    ids = torch.randint(0, 96, (1, 11), generator=torch.Generator().manual_seed(5))
    for case in sorted(HF_CASES):
        original = _build_hf(case)
        original.save_pretrained(tmp_path / case / "src", safe_serialization=True)
        spec, state = import_hf(tmp_path / case / "src")
        result = export_hf(archc.compile(spec), tmp_path / case / "out", state.__getitem__)
        assert result.model_type == original.config.model_type, case
        with torch.no_grad():
            ref = original(ids).logits.float()
        assert float((_hf_logits(tmp_path / case / "out", ids) - ref).abs().max()) <= ATOL, case


def test_hf_directory_compiled_then_exported_keeps_weights_and_tokenizer(tmp_path, capsys):
    """HF dir (with a tokenizer) -> `archc compile` -> `archc export-hf`: the same tensors, the same
    tokenizer files and generation config, and the model type the spec was imported from."""
    from safetensors.torch import load_file

    graph = archc.compile(spec_from_dict(CASES["mistral"]))
    state = randomised_state(graph, seed=9)
    export_hf(graph, tmp_path / "src", state.__getitem__)
    run, _ = _train_dir(tmp_path, CASES["mistral"])  # borrow its tokenizer files
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "src" / name).write_bytes((run / name).read_bytes())
    (tmp_path / "src" / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3], "bos_token_id": 1}))
    assert run_cli(["compile", str(tmp_path / "src"), "-o", str(tmp_path / "c")], capsys)[0] == 0
    rc, out, err = run_cli(["export-hf", str(tmp_path / "c"), "-o", str(tmp_path / "back")], capsys)
    assert rc == 0, err
    assert "model_type mistral" in out
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "src" / name).read_bytes(), name
    a, b = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_compiled_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(json.dumps(CASES["gpt2"]))
    assert run_cli(["compile", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "c")], capsys)[0] == 0
    data = tmp_path / "c" / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])  # truncated
    rc, _, err = run_cli(["export-hf", str(tmp_path / "c"), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "compile it again" in err, err
    assert not (tmp_path / "o").exists()
