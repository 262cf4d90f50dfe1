"""6.6 sizes: a million layers is judged from a light graph (a few layers built, costs in closed
form) in seconds and bounded memory; a model that cannot fit is refused before anything is built."""

from __future__ import annotations

import json
import struct
import time

import pytest

from hostile_util import MEMORY_BOUND, ROOT, T, child, in_process, refused

import archc
from archc.cost import LIGHT_LAYERS, cost, light_graph
from archc.loader import library_specs, load_spec

MILLION = ["--set", "n_layers=1000000"]


def llama_params(V: int, D: int, F: int, N: int) -> int:
    """LLaMA's parameter count written from the paper's layer (RMSNorm weights, no biases, SwiGLU
    with three D x F matrices, untied head): an oracle independent of the graph."""
    return V * D + N * (4 * D * D + 3 * D * F + 2 * D) + D + V * D


def test_closed_form_matches_the_paper_count_at_a_million_layers():
    spec = load_spec(ROOT / "specs" / "llama.yaml", ["n_layers=1000000"])
    t0 = time.monotonic()
    c = cost(light_graph(spec))
    assert time.monotonic() - t0 < 5
    assert c.params == llama_params(32000, 4096, 11008, 1_000_000)
    assert c.kv_elements_per_token == 1_000_000 * 2 * 4096


@pytest.mark.parametrize("path", library_specs(), ids=lambda p: p.stem)
def test_light_graph_costs_equal_the_full_graph(path):
    """Every number cost() gives, light vs full, for each library spec at 3x the light depth (a
    negative control below shows the comparison sees a dropped layer)."""
    spec = load_spec(path, [f"n_layers={3 * LIGHT_LAYERS}", "vocab_size=128", "max_seq_len=64"])
    full, light = cost(archc.compile(spec)), cost(light_graph(spec))
    assert light == full
    assert light_graph(spec).built_layers == LIGHT_LAYERS
    short = load_spec(path, [f"n_layers={3 * LIGHT_LAYERS - 1}", "vocab_size=128", "max_seq_len=64"])
    assert cost(light_graph(short)) != full


@pytest.mark.parametrize("argv", [
    ["show", "llama", *MILLION],
    ["diff", "llama", "palm", "--set-b", "n_layers=1000000"],
    ["diff", "llama", "llama", *MILLION, "--set-b", "norm.placement=post", "--format", "json"],
    ["compare", "llama", "palm", *MILLION],
    ["draw", "llama", *MILLION, "-o", "{tmp}/d.dot"],
], ids=["show", "diff", "diff-json", "compare", "draw"])
def test_light_commands_at_a_million_layers(argv, tmp_path):
    """Each finishes in a child limited to MEMORY_BOUND of address space (was: 5.8 GB and a hang)."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = child(argv, timeout=120, memory=MEMORY_BOUND)
    assert "Traceback" not in err, err
    assert code in (0, 1), err
    if "json" in argv:
        data = json.loads(out)
        assert any(c["layers"] == [[0, 999_999]] for c in data["structure"])
    elif argv[0] == "diff":
        assert "1000000" in out.replace(",", "")


def test_diff_text_at_a_million_layers_says_all_layers(capsys):
    code, out, _ = in_process(["diff", "llama", "llama", *MILLION, "--set-b", "norm.placement=post",
                               "--set-b", "norm.final=true"], capsys)
    assert code == 1
    assert "in all 1000000 layers" in out


def test_compile_of_a_million_layers_is_refused_up_front(tmp_path):
    line = refused(child(["compile", "llama", *T, *MILLION, "-o", tmp_path / "m"], timeout=120))
    assert "GiB" in line
    assert list(tmp_path.iterdir()) == []


def test_import_hf_config_of_a_million_layers_beside_a_small_checkpoint(tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1_000_000,
           "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    header = {f"model.layers.{i}.self_attn.q_proj.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 0]}
              for i in range(2)}
    h = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h)
    t0 = time.monotonic()
    refused(in_process(["import-hf", d, "-o", tmp_path / "s.yaml"], capsys), "1000000 layers", "has 2")
    assert time.monotonic() - t0 < 30
    # without a checkpoint the spec is written at once: nothing per layer is built
    (d / "model.safetensors").unlink()
    assert in_process(["import-hf", d, "-o", tmp_path / "s.yaml"], capsys)[0] == 0
