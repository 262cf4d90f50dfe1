"""export-hf's token ids from a hostile generation_config.json (archc.hf.export.special_token_ids, through
archc.text.generation_id, the policy commit e61f10d gave tokenizer_config.json's tokens). Expected ids written
by hand from transformers' GenerationConfig types: bos_token_id and pad_token_id an int, eos_token_id an int or
a list of ints; null (and an empty list, and a negative id, older conversions' "unset") is no token. Anything else is one line naming the file and field, exit 2;
it was skipped, so config.json said null (or the tokenizer's id) while the generation_config.json copied beside
it kept the malformed value. archc run reads the file through the same function (negative control below: both
readers decide each case alike)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archc.errors import UserError
from archc.hf.export import special_token_ids
from archc.text import special_token_ids as run_token_ids
from conftest import save_tiny_hf_llama
from hostile_util import generation_config_dir, in_process, refused



@pytest.mark.parametrize("gen, expected", [
    ({"eos_token_id": 2}, {"eos_token_id": 2}),
    ({"eos_token_id": 0}, {"eos_token_id": 0}),
    ({"eos_token_id": [2, 3]}, {"eos_token_id": [2, 3]}),  # transformers allows a list for eos
    ({"eos_token_id": [2]}, {"eos_token_id": [2]}),
    ({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
    ({"eos_token_id": None, "pad_token_id": None}, {}),  # no such token
    ({"eos_token_id": []}, {}),  # an empty list: no token either
    ({"pad_token_id": -1}, {}),  # "unset" in older conversions (LLaMA's); transformers warns and goes on
    ({"eos_token_id": -1, "bos_token_id": 1}, {"bos_token_id": 1}),
    ({"temperature": 0.7}, {}),  # fields archc does not read are not looked at
])
def test_accepted_values(tmp_path, gen, expected):
    d = generation_config_dir(tmp_path, gen)
    assert special_token_ids(d) == expected
    assert {f"{k}_token_id": v for k, v in run_token_ids(d).items() if v} == \
        {k: v if isinstance(v, list) else [v] for k, v in expected.items()}


@pytest.mark.parametrize("field, value, says", [
    ("eos_token_id", "2", 'found "2"'), ("eos_token_id", True, "found true"), ("eos_token_id", 2.0, "found 2.0"),
    ("eos_token_id", {"id": 2}, 'found {"id": 2}'),
    ("eos_token_id", [2, "3"], 'found [2, "3"]'), ("eos_token_id", [[2]], "found [[2]]"), ("eos_token_id", [True], "found [true]"),
    ("eos_token_id", [2, -1], "found [2, -1]"),
    ("bos_token_id", [1], "found [1]"),  # a list only where transformers takes one (eos)
    ("pad_token_id", [0, 1], "found [0, 1]"), ("bos_token_id", 1.5, "found 1.5"),
])
def test_malformed_values_name_the_file_and_field(tmp_path, field, value, says):
    d = generation_config_dir(tmp_path, {field: value})
    for reader in (special_token_ids, run_token_ids):  # export-hf, and archc run's stop ids
        with pytest.raises(UserError) as e:
            reader(d)
        msg = str(e.value)
        assert msg.startswith(f"{d / 'generation_config.json'}: {field}: expected ") and says in msg and "\n" not in msg, msg
        assert ("a list of them" in msg) == (field == "eos_token_id")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A compiled tiny llama (export-hf reads the token ids of its generation_config.json)."""
    root = tmp_path_factory.mktemp("generation")
    hf = save_tiny_hf_llama(root / "hf", layers=1)
    from archc.cli import main

    assert main(["compile", str(hf), "-o", str(root / "m")]) == 0
    return root / "m"


@pytest.mark.parametrize("value, code", [([2, 3], 0), (2, 0), ("2", 2), ([2, 2.5], 2)])
def test_cli_export_hf(compiled, tmp_path, capsys, value, code):
    """export-hf: an id or a list of ids is config.json's eos_token_id; a string or a list holding a non-id is one line,
    exit 2, and no output folder."""
    (compiled / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": value}))
    out = tmp_path / "back"
    result = in_process(["export-hf", compiled, "-o", out], capsys)
    if code == 0:
        assert result[0] == 0, result
        config = json.loads((out / "config.json").read_text())
        assert config["eos_token_id"] == value and config["bos_token_id"] == 1
    else:
        refused(result, "generation_config.json: eos_token_id", f"found {json.dumps(value)}")
        assert not out.exists()
