"""`archc export-hf --max-shard-size`: a checkpoint larger than the limit is written as shards plus
model.safetensors.index.json the way transformers' save_pretrained writes them. Oracles:
huggingface_hub's own splitter (split_torch_state_dict_into_shards, what save_pretrained calls) must
put the same tensors in the same files; transformers' from_pretrained of the shards gives the
unsharded export's tensors and logits; import-hf of the shards gives back the graph tensors bit for bit."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import torch
import transformers

import archc
from archc.hf import import_hf
from archc.hf.export import DEFAULT_MAX_SHARD_SIZE, export_hf, parse_shard_size
from archc.loader import spec_from_dict
from conftest import cli_in_fresh_python, run_cli

SPEC = {"name": "t-llama", "vocab_size": 96, "d_model": 64, "n_layers": 2, "max_seq_len": 64, "dtype": "float32",
        "norm": {"kind": "rmsnorm"}, "mlp": {"activation": "swiglu", "d_ff": 96, "bias": False},
        "position": {"kind": "rope"}, "attention": {"n_heads": 4, "kv_heads": 2}}
LIMIT = "20KB"  # the 96 x 64 float32 embedding (24.6 kB) is alone in its shard; the rest packs into a few


def _state(graph) -> dict:
    g = torch.Generator().manual_seed(0)
    return {full: torch.randn(shape, generator=g) * 0.3 + (1.0 if len(shape) == 1 else 0.0) for full, shape, _ in graph.params()}


def _header_order(file: Path) -> list[str]:
    raw = file.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    graph = archc.compile(spec_from_dict(SPEC))
    state = _state(graph)
    one = export_hf(graph, tmp / "one", state.__getitem__)
    many = export_hf(graph, tmp / "many", state.__getitem__, max_shard_size=LIMIT)
    assert one.shards == 1 and many.shards > 2, (one.shards, many.shards)
    return graph, state, tmp / "one", tmp / "many"


def test_shards_are_the_ones_save_pretrained_makes(dirs):
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import load_file

    _, _, one, many = dirs
    single = load_file(str(one / "model.safetensors"))
    ordered = {k: single[k] for k in _header_order(one / "model.safetensors")}  # the order the exporter writes
    split = split_torch_state_dict_into_shards(ordered, filename_pattern="model{suffix}.safetensors", max_shard_size=LIMIT)
    assert split.is_sharded
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == split.tensor_to_filename
    assert index["metadata"]["total_size"] == split.metadata["total_size"]
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in single.values())
    names = sorted(p.name for p in many.iterdir() if p.suffix == ".safetensors")
    assert names == sorted(split.filename_to_tensors) and "model.safetensors" not in names
    for file, keys in split.filename_to_tensors.items():
        shard = load_file(str(many / file))
        assert sorted(shard) == sorted(keys)
        assert all(torch.equal(shard[k], single[k]) for k in keys)


def test_from_pretrained_loads_the_shards(dirs):
    _, _, one, many = dirs
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(1))
    models = [transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in (one, many)]
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        la, lb = (m(ids).logits for m in models)
    assert torch.equal(la, lb) and float(la.abs().max()) > 0.1
    # negative control: a shard missing is an error, not a model with some weights left at their init
    second = sorted(many.glob("model-*.safetensors"))[1]
    second.rename(many / "aside")
    try:
        with pytest.raises(Exception):
            transformers.AutoModelForCausalLM.from_pretrained(many, dtype=torch.float32)
    finally:
        (many / "aside").rename(second)


def test_import_hf_reads_the_shards(dirs):
    graph, state, _, many = dirs
    spec, back = import_hf(many)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_sizes_parse_like_huggingface_hub():
    from huggingface_hub.serialization._base import parse_size_to_int

    for text in ("50GB", "5GB", "500MB", "20KB", "1.5GB", "2TB"):
        assert parse_shard_size(text) == parse_size_to_int(text), text
    assert parse_shard_size("2GiB") == 2 * 2**30 and parse_shard_size("1000") == 1000


def test_default_is_transformers_save_pretrained_default():
    from typer.models import OptionInfo

    from archc.commands.hf_cmds import export_hf_cmd

    hf_default = inspect.signature(transformers.PreTrainedModel.save_pretrained).parameters["max_shard_size"].default
    cli_default = inspect.signature(export_hf_cmd).parameters["max_shard_size"].default
    cli_default = cli_default.default if isinstance(cli_default, OptionInfo) else cli_default
    assert DEFAULT_MAX_SHARD_SIZE == hf_default == cli_default


def test_cli_shards_and_refuses_a_bad_size(tmp_path, capsys):
    sets = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
            "--set", "vocab_size=100", "--set", "max_seq_len=64"]
    rc, out, err = run_cli(["export-hf", "llama", *sets, "--dtype", "float32", "-o", str(tmp_path / "a"), "--max-shard-size", "100KB"], capsys)
    assert rc == 0, err
    assert "shards" in out and (tmp_path / "a" / "model.safetensors.index.json").is_file()
    r = cli_in_fresh_python(["export-hf", "llama", "-o", tmp_path / "o", "--max-shard-size", "5XB"])
    assert r.codes == [2], r.stderr
    assert "torch" not in r.heavy, "torch imported before the argument check"
    assert "--max-shard-size 5XB" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_import_hf_reads_shards_save_pretrained_wrote(tmp_path):
    """The other direction's oracle: transformers' own sharded save reads as its unsharded save does."""
    from archc.hf import load_weights

    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size=LIMIT)
    assert (tmp_path / "many" / "model.safetensors.index.json").is_file() and not (tmp_path / "one" / "model.safetensors.index.json").exists()
    spec, one = import_hf(tmp_path / "one")
    graph = archc.compile(spec)
    many = load_weights(graph, tmp_path / "many")
    assert sorted(one) == sorted(many) and all(torch.equal(one[k], many[k]) for k in one)
