"""export-hf's special token ids (archc.hf.export.special_token_ids) from hostile tokenizer_config.json and
special_tokens_map.json values. The expected ids are written by hand from tokenizer.json below: a token's
text or AddedToken dict is looked up; an integer that tokenizer.json has is the id itself; null means no
such token; a token text the vocabulary does not list gives no id (documented skip); anything else (a list,
an id the vocabulary lacks, a bool, a float, a dict without a string content) is one line naming the file
and field, exit 2. They were skipped silently, and an int id was dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archc.errors import UserError
from archc.hf.export import special_token_ids
from conftest import save_tiny_hf_llama
from hostile_util import in_process, refused

TOKENIZER = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<s>"}, {"id": 2, "content": "</s>"}],
             "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3}, "unk_token": "<pad>"}}
UNIGRAM = {"version": "1.0", "added_tokens": [],
           "model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], ["a", -1.0]], "unk_id": 0}}
FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _dir(tmp_path: Path, file: str, content: dict, tokenizer: dict = TOKENIZER) -> Path:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tokenizer))
    (d / file).write_text(json.dumps(content))
    return d


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("value, expected", [
    ("<s>", 1), ({"content": "<s>", "special": True}, 1),
    (3, 3), (0, 0),  # an id tokenizer.json has
    (None, None),  # the tokenizer has no such token
    ("<not-in-vocab>", None),  # text the vocabulary does not list: no id known (documented skip)
])
def test_accepted_values(tmp_path, file, value, expected):
    ids = special_token_ids(_dir(tmp_path, file, {"eos_token": value}))
    assert ids.get("eos_token_id") == expected and set(ids) <= {"eos_token_id"}


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("value, says", [
    ([2], "found [2]"), ([], "found []"), (True, "found true"), (2.0, "found 2.0"), ({"id": 2}, 'found {"id": 2}'),
    ({"content": 2}, "found {\"content\": 2}"), (-1, "token id -1 is not in"), (4, "token id 4 is not in"),
])
def test_malformed_values_name_the_file_and_field(tmp_path, file, value, says):
    d = _dir(tmp_path, file, {"bos_token": "<s>", "eos_token": value})
    with pytest.raises(UserError) as e:
        special_token_ids(d)
    msg = str(e.value)
    assert msg.startswith(f"{d / file}: eos_token: ") and says in msg and "\n" not in msg


def test_tokenizer_config_wins_over_special_tokens_map(tmp_path):
    """As archc.text.Text merges them: a role tokenizer_config.json names (null included) is its; the map fills
    only the roles it does not mention (its malformed value for a role the config names is not read)."""
    d = _dir(tmp_path, "tokenizer_config.json", {"eos_token": "</s>", "pad_token": None})
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": [9], "pad_token": "<pad>", "bos_token": "<s>"}))
    assert special_token_ids(d) == {"eos_token_id": 2, "bos_token_id": 1}


def test_unigram_vocabulary_ids_are_positions(tmp_path):
    d = _dir(tmp_path, "tokenizer_config.json", {"bos_token": "<s>", "eos_token": 2, "pad_token": 0}, tokenizer=UNIGRAM)
    assert special_token_ids(d) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A compiled tiny llama carrying a tokenizer (the folder export-hf reads its token ids from)."""
    root = tmp_path_factory.mktemp("special")
    hf = save_tiny_hf_llama(root / "hf", layers=1)
    (hf / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    from archc.cli import main

    assert main(["compile", str(hf), "-o", str(root / "m")]) == 0
    (root / "m" / "generation_config.json").unlink()  # the tokenizer's names decide the ids
    return root / "m"


@pytest.mark.parametrize("value, code", [(2, 0), ([2], 2)])
def test_cli_export_hf(compiled, tmp_path, capsys, value, code):
    """export-hf: an int id is the exported eos_token_id; a list is one line, exit 2, and no output folder."""
    (compiled / "tokenizer_config.json").write_text(json.dumps({"eos_token": value}))
    out = tmp_path / "back"
    result = in_process(["export-hf", compiled, "-o", out], capsys)
    if code == 0:
        assert result[0] == 0, result
        assert json.loads((out / "config.json").read_text())["eos_token_id"] == 2
    else:
        refused(result, "tokenizer_config.json: eos_token", "found [2]")
        assert not out.exists()
