"""The README's Training section names, for each optimizer, the library specs that use it."""

from __future__ import annotations

import re
from pathlib import Path

from archc.loader import load_spec

README = Path(__file__).resolve().parents[2] / "README.md"
FAMILY = {"LLaMA": "llama", "BLOOM": "bloom", "GLM": "glm", "Falcon": "falcon", "GPT-NeoX": "gpt-neox",
          "GPT-1": "gpt1", "GPT-2": "gpt2", "PaLM": "palm", "GPT": None}


def test_readme_optimizer_attribution_matches_the_specs():
    text = re.sub(r"\s+", " ", README.read_text())
    m = re.search(r"gives AdamW \(Loshchilov & Hutter 2019; ([^)]*)\) or Adam \(Kingma & Ba 2015; ([^)]*)\)", text)
    assert m, "the Training section's optimizer sentence moved; update this test"
    for kind, names in (("adamw", m.group(1)), ("adam", m.group(2))):
        for name in (n.strip() for n in names.split(",")):
            stem = FAMILY.get(name)
            assert stem, f"README names {name!r} for {kind}, which is not one library spec"
            assert load_spec(stem).training.optimizer.kind.value == kind, (name, kind)
