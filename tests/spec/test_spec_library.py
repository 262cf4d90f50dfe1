"""The spec library: every file validates, compiles, carries its citation, and its parameter count
equals the published figure of the model it describes.

The figures below are copied from the cited sources (model cards, the Pythia README, papers), never
from our own output; each spec's header comment names the same source.
"""

from __future__ import annotations

import re

import pytest

import archc
from archc.cost import cost
from archc.loader import load_spec
from conftest import LIBRARY, SPECS, tiny_spec

# name -> (published count, precision the source gives it to: 1 = exact, else the rounding unit)
PUBLISHED = {
    "llama": (6_738_415_616, 1),  # huggyllama/llama-7b (LLaMA-7B)
    "llama2-70b": (68_976_648_192, 1),  # meta-llama/Llama-2-70b-hf
    "mistral": (7_241_732_096, 1),  # mistralai/Mistral-7B-v0.1
    "gpt2": (124_439_808, 1),  # openai-community/gpt2
    "gpt1": (116_534_784, 1),  # openai-community/openai-gpt, as transformers builds it (tied head)
    "bloom": (7_069_016_064, 1),  # bigscience/bloom-7b1 model card
    "gpt-neox": (1_414_647_808, 1),  # Pythia README, pythia-1.4b "total params"
    "falcon": (6_921_720_704, 1),  # tiiuae/falcon-7b
    "gemma": (2_506_172_416, 1),  # google/gemma-2b
    "palm": (8_630_000_000, 10_000_000),  # PaLM Table 1: 8.63B
    "glm": (10_000_000_000, 1_000_000_000),  # GLM-10B: 10B (paper, THUDM/glm-10b model card)
}


def test_every_library_spec_has_a_published_count():
    assert sorted(PUBLISHED) == sorted(LIBRARY), "add the published count of each new library spec here"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    params = cost(archc.compile(spec)).params
    published, unit = PUBLISHED[name]
    if unit == 1:
        assert params == published
    else:
        assert round(params / unit) * unit == published, f"{params:,} does not round to {published:,}"


def test_published_count_check_can_fail():
    """Negative control: one layer more, or an untied head, must move the count off the figure."""
    llama = cost(archc.compile(load_spec(SPECS / "llama.yaml", ["n_layers=33"]))).params
    gpt2 = cost(archc.compile(load_spec(SPECS / "gpt2.yaml", ["embedding.output=untied"]))).params
    assert llama != PUBLISHED["llama"][0]
    assert gpt2 == PUBLISHED["gpt2"][0] + 50257 * 768  # exactly one more vocab x d_model matrix


def test_rounded_counts_are_close_to_exact():
    """The paper-only figures are rounded; the computed counts must still be within the rounding."""
    palm = cost(archc.compile(load_spec(SPECS / "palm.yaml"))).params
    assert 8_625_000_000 <= palm < 8_635_000_000
    glm = cost(archc.compile(load_spec(SPECS / "glm.yaml"))).params
    assert 9_500_000_000 <= glm < 10_500_000_000


@pytest.mark.parametrize("name", LIBRARY)
def test_library_file_header(name):
    text = (SPECS / f"{name}.yaml").read_text()
    first = text.splitlines()[0]
    assert first == "# yaml-language-server: $schema=archc-spec.schema.json"
    assert re.search(r"^# .*(19|20)\d\d", text, re.M), "header comment must cite a paper or config (with year)"
    assert "arameter count" in text, "header comment must state the published parameter count"
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.reference, "reference: field is required in library specs"


@pytest.mark.parametrize("name", LIBRARY)
def test_tiny_variant_keeps_every_axis(name):
    full = load_spec(SPECS / f"{name}.yaml")
    tiny = tiny_spec(name)
    archc.compile(tiny)
    assert tiny.d_model == 64 and tiny.n_layers == 2
    for section in ("norm", "position", "residual", "embedding"):
        a, b = getattr(full, section), getattr(tiny, section)
        assert type(a) is type(b)
        kinds = {k: v for k, v in a.model_dump().items() if isinstance(v, str)}
        assert kinds == {k: v for k, v in b.model_dump().items() if isinstance(v, str)}, section
    assert full.mlp.activation == tiny.mlp.activation
    assert full.attention.sharing == tiny.attention.sharing
    assert full.attention.mask == tiny.attention.mask
    assert (full.attention.sliding_window is None) == (tiny.attention.sliding_window is None)


def test_library_covers_the_architecture_table():
    """ARCHITECTURES.md rows: each value named there appears in some library spec."""
    specs = {n: load_spec(SPECS / f"{n}.yaml") for n in LIBRARY}
    seen = {
        "rmsnorm": any(s.norm.kind.value == "rmsnorm" for s in specs.values()),
        "layernorm no bias": any(s.norm.kind.value == "layernorm" and not s.norm.bias for s in specs.values()),
        "post-norm": any(s.norm.placement.value == "post" for s in specs.values()),
        "swiglu": any(s.mlp.activation.value == "swiglu" for s in specs.values()),
        "geglu": any(s.mlp.activation.value.startswith("geglu") for s in specs.values()),
        "rope": any(s.position.kind.value == "rope" for s in specs.values()),
        "partial rope": any(s.position.kind.value == "rope" and s.position.rotary_fraction < 1 for s in specs.values()),
        "alibi": any(s.position.kind.value == "alibi" for s in specs.values()),
        "glm2d": any(s.position.kind.value == "glm2d" for s in specs.values()),
        "learned": any(s.position.kind.value == "learned" for s in specs.values()),
        "mqa": any(s.attention.sharing.value == "mqa" for s in specs.values()),
        "gqa": any(s.attention.sharing.value == "gqa" for s in specs.values()),
        "prefix": any(s.attention.mask.value == "prefix" for s in specs.values()),
        "parallel shared": any(s.residual.parallel_norms and s.residual.parallel_norms.value == "shared" for s in specs.values()),
        "parallel separate": any(s.residual.parallel_norms and s.residual.parallel_norms.value == "separate" for s in specs.values()),
        "tied": any(s.embedding.output.value == "tied" for s in specs.values()),
        "untied": any(s.embedding.output.value == "untied" for s in specs.values()),
        "embedding norm": any(s.embedding.norm.value != "none" for s in specs.values()),
        "embedding multiplier": any(s.embedding_multiplier != 1 for s in specs.values()),
        "adafactor": any(s.training.optimizer.kind.value == "adafactor" for s in specs.values()),
        "adam": any(s.training.optimizer.kind.value == "adam" for s in specs.values()),
        "adamw": any(s.training.optimizer.kind.value == "adamw" for s in specs.values()),
        "memory-efficient kernel": any(s.attention.kernel.value == "memory_efficient" for s in specs.values()),
        "sliding window": any(s.attention.sliding_window for s in specs.values()),
    }
    assert [k for k, v in seen.items() if not v] == []


def test_the_five_base_rows():
    """Spot-check the table's columns against the specs (LLaMA, PaLM, GLM, BLOOM, GPT-2)."""
    llama, palm, glm, bloom, gpt2 = (load_spec(SPECS / f"{n}.yaml") for n in ("llama", "palm", "glm", "bloom", "gpt2"))
    assert (llama.norm.kind.value, llama.mlp.activation.value, llama.position.kind.value, llama.embedding.output.value) == (
        "rmsnorm", "swiglu", "rope", "untied")
    assert palm.attention.kv_heads == 1 and palm.residual.layout.value == "parallel" and palm.norm.bias is False
    assert palm.mlp.bias is False and palm.attention.qkv_bias is False and palm.embedding.output.value == "tied"
    assert glm.position.kind.value == "glm2d" and glm.attention.mask.value == "prefix" and glm.mlp.bias
    assert bloom.position.kind.value == "alibi" and bloom.embedding.norm.value == "layernorm"
    assert gpt2.position.kind.value == "learned" and gpt2.embedding.output.value == "tied"
    assert gpt2.init.scheme.value == "scaled_residual"


@pytest.mark.parametrize("name", LIBRARY)
def test_resolved_spec_round_trips_through_yaml(tmp_path, name):
    """A compiled model folder stores the resolved spec (derived values written out); it must load
    back to the same spec, so derived fields never disagree with the fields they come from."""
    import yaml

    spec = load_spec(SPECS / f"{name}.yaml")
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
    assert load_spec(p) == spec
