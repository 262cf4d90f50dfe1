"""A key given twice in one object of a Hugging Face JSON file (config.json, generation_config.json,
tokenizer_config.json) is refused with one line naming the file and the key, exit 2. Python's json.loads
keeps the last value without a word (shown below as the control: the same text parses), so
`"num_hidden_layers": 2, "num_hidden_layers": 3` imported as 3 layers while a reader of the file may well
take it for 2. The same key in two different objects is ordinary JSON and still read."""

from __future__ import annotations

import json

import pytest

from archc.errors import UserError
from archc.files import read_json
from archc.hf.export import special_token_ids
from archc.text import special_token_ids as run_token_ids
from hostile_util import in_process, refused

CONFIG = '{"model_type": "mistral", "num_hidden_layers": 2, "hidden_size": 64, "num_hidden_layers": 3}'


def test_the_default_parser_would_take_the_last_value():
    """The control: what archc read before (json.loads) accepts the text and silently keeps 3."""
    assert json.loads(CONFIG)["num_hidden_layers"] == 3


def test_import_hf_refuses_a_duplicate_key_in_config_json(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(CONFIG)
    out = tmp_path / "m.yaml"
    line = refused(in_process(["import-hf", src, "-o", out], capsys),
                   str(src / "config.json"), '"num_hidden_layers"', "twice")
    assert "delete" in line
    assert not out.exists()


def test_import_hf_reads_the_same_config_without_the_duplicate(tmp_path, capsys):
    """Negative control: the refusal is the duplicate, not anything else in the file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(json.loads(CONFIG)))
    rc, _, err = in_process(["import-hf", src, "-o", tmp_path / "m.yaml"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("name, text, key", [
    ("generation_config.json", '{"eos_token_id": 2, "eos_token_id": 3}', "eos_token_id"),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"0": {"content": "<s>", "content": "</s>"}}}', "content"),
])
def test_side_files_refuse_a_duplicate_key_nested_or_not(tmp_path, name, text, key):
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_text(text)
    json.loads(text)  # control: valid for json.loads
    readers = (special_token_ids, run_token_ids) if name == "generation_config.json" else ()
    for reader in readers:  # export-hf's ids and archc run's stop ids
        with pytest.raises(UserError) as e:
            reader(src)
        assert str(e.value).startswith(f"{src / name}: key \"{key}\" appears twice"), e.value
    with pytest.raises(UserError) as e:
        read_json(src / name)
    msg = str(e.value)
    assert msg.startswith(f"{src / name}: key \"{key}\" appears twice") and "\n" not in msg, msg


def test_the_same_key_in_different_objects_is_read(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": {"x": 1}, "b": {"x": 2}, "x": [{"x": 3}, {"x": 4}]}')
    assert read_json(p) == {"a": {"x": 1}, "b": {"x": 2}, "x": [{"x": 3}, {"x": 4}]}
