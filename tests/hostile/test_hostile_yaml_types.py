"""6.2 YAML aliases and 6.7 strict types: each case here was a hang, a traceback or a silent
acceptance before (the issue's repro), and is now one line, exit 2, quickly and in bounded memory."""

from __future__ import annotations

import json
import resource
import time

import pytest

from hostile_util import T, deadline, in_process, refused

import archc.loader as loader


def laughs(depth: int = 9, width: int = 9) -> str:
    """The billion-laughs document: `width` aliases of the level below, `depth` levels (9^9 values)."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_billion_laughs_file_is_refused_fast(tmp_path, capsys):
    (tmp_path / "l.yaml").write_text("name: x\n" + laughs())
    before, t0 = _peak_kib(), time.monotonic()
    with deadline(20):
        result = in_process(["validate", tmp_path / "l.yaml"], capsys)
    refused(result, "expands to more than")
    assert time.monotonic() - t0 < 10
    assert _peak_kib() - before < 200 * 1024  # the peak grew by less than 200 MiB (was 7.5 GB)


def test_billion_laughs_in_a_set_value(capsys):
    value = "{" + laughs(7).strip().replace("\n", ", ") + "}"
    with deadline(20):
        result = in_process(["validate", "llama", "--set", f"x={value}"], capsys)
    refused(result, "expands to more than")


def test_recursive_alias_is_a_cycle_not_a_recursion_error(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("name: x\na: &a [*a]\n")
    refused(in_process(["validate", tmp_path / "r.yaml"], capsys), "cycle")
    refused(in_process(["validate", "llama", "--set", "x=&a [*a]"], capsys), "cycle")


def test_complex_key_has_a_plain_message(tmp_path, capsys):
    (tmp_path / "k.yaml").write_text("? [a, b]\n: 1\n")
    line = refused(in_process(["validate", tmp_path / "k.yaml"], capsys), "complex key")
    assert "Node" not in line


def test_aliases_within_the_budget_still_work(tmp_path):
    """A spec that reuses a mapping through an alias is fine (negative control for the budget)."""
    (tmp_path / "ok.yaml").write_text("extends: llama\nnorm: &n {kind: rmsnorm, eps: 1.0e-6}\n")
    assert loader.load_spec(tmp_path / "ok.yaml").norm.eps == 1e-6


def test_budget_counts_expanded_values_not_text(tmp_path):
    """Just past the budget is refused, just under is read: the limit is the expanded size."""
    n = loader.MAX_NODES
    width = 1000
    reps = n // width
    doc = "a: &a [" + ", ".join(["1"] * width) + "]\nb: [" + ", ".join(["*a"] * (reps + 1)) + "]\n"
    (tmp_path / "big.yaml").write_text(doc)
    with pytest.raises(loader.SpecError, match="expands"):
        loader.read_yaml(tmp_path / "big.yaml")
    doc = "a: &a [" + ", ".join(["1"] * width) + "]\nb: [" + ", ".join(["*a"] * (reps // 2)) + "]\n"
    (tmp_path / "fine.yaml").write_text(doc)
    data, _ = loader.read_yaml(tmp_path / "fine.yaml")
    assert len(data["b"]) == reps // 2


# ---- 6.7 strict types and finite floats ------------------------------------------------------

@pytest.mark.parametrize("setting, needle", [
    ("n_layers=true", "valid integer"),
    ('d_model="64"', "valid integer"),
    ("d_model=64.0", "valid integer"),
    ('attention.qkv_bias="yes"', "valid boolean"),
    ("attention.qkv_bias=1", "valid boolean"),
    ("init.std=.inf", "finite"),
    ("norm.eps=.inf", "finite"),
    ("position.theta=.inf", "finite"),
    ("position.theta=.nan", "finite"),
    ("init.std=-.inf", "init.std"),
    ('norm.eps="1e-5"', "valid number"),
    ('name=5', "valid string"),
])
def test_strict_scalars(setting, needle, capsys):
    refused(in_process(["validate", "llama", "--set", setting], capsys), needle)


@pytest.mark.parametrize("setting", ["position.theta=10000", "norm.eps=1e-5", "norm.eps=1.0e-05", "init.std=1",
                                     "attention.qkv_bias=true", "training.optimizer.betas=[0.9, 1]"])
def test_what_published_configs_write_still_validates(setting, capsys):
    """Negative control: an int for a float field, 1e-5 unquoted, a YAML bool."""
    code, out, err = in_process(["validate", "llama", "--set", setting], capsys)
    assert code == 0, (out, err)


def test_hf_infinity_rope_theta_is_refused(tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "rope_theta": float("inf")}))  # writes Infinity
    assert "Infinity" in (tmp_path / "hf" / "config.json").read_text()
    refused(in_process(["import-hf", tmp_path / "hf", "-o", tmp_path / "s.yaml"], capsys), "finite")
    assert not (tmp_path / "s.yaml").exists()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "rope_theta": 500000}))
    assert in_process(["import-hf", tmp_path / "hf", "-o", tmp_path / "s.yaml"], capsys)[0] == 0


def test_infinite_std_no_longer_compiles(tmp_path, capsys):
    """Was: compiled, and `run` printed 0,0,0."""
    refused(in_process(["compile", "llama", *T, "--set", "init.std=.inf", "-o", tmp_path / "m"], capsys), "finite")
    assert not (tmp_path / "m").exists()


def test_merge_key_names_the_fix(tmp_path, capsys):
    """`<<: *base` was 'YAML error: could not determine a constructor for the tag ...merge': no fix named."""
    (tmp_path / "m.yaml").write_text("extends: llama\nbase: &b {kind: rmsnorm}\nnorm:\n  <<: *b\n  eps: 1.0e-6\n")
    line = refused(in_process(["validate", tmp_path / "m.yaml"], capsys), "m.yaml:4", "merge keys", "extends")
    assert "constructor" not in line
    refused(in_process(["validate", "llama", "--set", "norm={<<: {kind: rmsnorm}}"], capsys), "merge keys")


@pytest.mark.parametrize("command", [["validate", ""], ["show", ""], ["diff", "", "llama"]])
def test_empty_path_argument(command, capsys):
    """'' is Path('.'): the message was 'directory has no spec.yaml' with no name in it."""
    refused(in_process(command, capsys), "'': an empty path; give a spec file")
