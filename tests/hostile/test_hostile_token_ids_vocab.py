"""Token ids past the model's vocabulary (archc.text.check_in_vocab). A bos/eos/pad id that archc would use
(written by export-hf, carried into genai_config.json by compile, stopped at by `archc run --prompt`) must be
below vocab_size: one at or past it is one line naming the file and field, exit 2, before any output. They
were checked by type only, so eos 96 in a vocabulary of 96 was written into the export (never generated, so
generation never stopped). The tiny Hugging Face llama here has vocab_size 96 (tests/conftest.py), so 95 is
the last id and 96 the first past it, written by hand; the same files with 95 pass (negative control), and
without a vocabulary to check against (vocab_size None: the readers as they were) 96 passes too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from archc.errors import UserError
from archc.hf.export import special_token_ids as export_ids
from archc.text import special_token_ids as run_ids
from conftest import save_tiny_hf_llama
from hostile_util import generation_config_dir, in_process, refused

V = 96  # save_tiny_hf_llama's vocab_size
WORDS = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<s>"}, {"id": 2, "content": "</s>"}],
         "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3, "<big>": V}, "unk_token": "<pad>"},
         "pre_tokenizer": {"type": "Whitespace"}}



@pytest.mark.parametrize("field, value, bad", [
    ("eos_token_id", V, V), ("eos_token_id", [2, V], V), ("eos_token_id", V + 1000, V + 1000),
    ("bos_token_id", V, V), ("pad_token_id", V, V),
])
def test_generation_config_id_past_the_vocabulary(tmp_path, field, value, bad):
    d = generation_config_dir(tmp_path, {field: value})
    for read in (lambda: export_ids(d, V), lambda: run_ids(d, V)):  # export-hf's reader and archc run's
        with pytest.raises(UserError) as e:
            read()
        msg = str(e.value)
        assert msg.startswith(f"{d / 'generation_config.json'}: {field}: token id {bad} is past the model's vocabulary "
                              f"(vocab_size {V}: ids 0 to {V - 1})") and "\n" not in msg, msg
    # negative control: without a vocabulary the type check alone passes it (the readers before this check)
    assert export_ids(d)[field] == value


@pytest.mark.parametrize("value", [V - 1, [2, V - 1], 0])
def test_ids_inside_the_vocabulary_pass(tmp_path, value):
    d = generation_config_dir(tmp_path, {"eos_token_id": value, "bos_token_id": V - 1})
    assert export_ids(d, V) == {"eos_token_id": value, "bos_token_id": V - 1}
    assert run_ids(d, V)["eos"] == (value if isinstance(value, list) else [value])


def test_tokenizer_id_past_the_vocabulary_only_when_written(tmp_path):
    """export-hf takes a role's id from the tokenizer when generation_config.json has none: the tokenizer's
    <big> (id 96) is refused there, and not looked at when generation_config.json gives that role."""
    d = tmp_path / "src"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(WORDS))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<big>", "bos_token": "<s>"}))
    with pytest.raises(UserError) as e:
        export_ids(d, V)
    assert str(e.value).startswith(f"{d / 'tokenizer_config.json'}: eos_token: token id {V} is past"), str(e.value)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert export_ids(d, V) == {"eos_token_id": 2, "bos_token_id": 1}


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    return save_tiny_hf_llama(tmp_path_factory.mktemp("vocab") / "hf", layers=1)


@pytest.fixture(scope="module")
def compiled(hf) -> Path:
    from archc.cli import main

    out = hf.parent / "m"
    assert main(["compile", str(hf), "-o", str(out)]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("eos, ok", [(V, False), (V - 1, True)])
def test_export_hf_never_writes_an_id_past_the_vocabulary(compiled, tmp_path, capsys, eos, ok):
    m = _copy(compiled, tmp_path / "m")
    (m / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": eos}))
    out = tmp_path / "back"
    result = in_process(["export-hf", m, "-o", out], capsys)
    if ok:
        assert result[0] == 0, result
        assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos
    else:
        refused(result, f"{m / 'generation_config.json'}: eos_token_id: token id {eos} is past")
        assert not out.exists()


@pytest.mark.parametrize("where", ["generation_config.json", "config.json"])
@pytest.mark.parametrize("eos, ok", [(V, False), (V - 1, True)])
def test_compile_refuses_before_writing(hf, tmp_path, capsys, where, eos, ok):
    """compile HF_DIR carries the ids into genai_config.json: from generation_config.json, or, without one,
    from config.json (as copy_tokenizer_files writes them)."""
    src = _copy(hf, tmp_path / "hf")
    if where == "config.json":
        (src / "generation_config.json").unlink()
    data = json.loads((src / where).read_text())
    data["eos_token_id"] = eos
    (src / where).write_text(json.dumps(data))
    out = tmp_path / "m"
    result = in_process(["compile", src, "-o", out], capsys)
    if ok:
        assert result[0] == 0, result
        assert json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"] == eos
    else:
        refused(result, f"{src / where}: eos_token_id: token id {eos} is past")
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("eos, ok", [(V, False), (V - 1, True)])
def test_run_with_text_refuses_a_stop_id_it_could_never_meet(compiled, tmp_path, capsys, eos, ok):
    m = _copy(compiled, tmp_path / "m")
    _save_words(m / "tokenizer.json")
    (m / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    _run_prompt(m, capsys, ok, f"{m / 'generation_config.json'}: eos_token_id: token id {eos} is past")


def _run_prompt(m: Path, capsys, ok: bool, refusal: str) -> None:
    """archc run --prompt on model folder m: exit 0 when ok, else the one-line refusal naming `refusal`."""
    result = in_process(["run", m, "--prompt", "a", "--max-new-tokens", "2", "--device", "cpu"], capsys)
    if ok:
        assert result[0] == 0, result
    else:
        refused(result, refusal)


def _save_words(path: Path) -> None:
    """WORDS as a tokenizer.json the `tokenizers` library reads (<big> is its id 96)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(WORDS["model"]["vocab"], unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def _words_dir(tmp_path: Path, config_file: str, eos: str) -> Path:
    d = tmp_path / "words"
    d.mkdir()
    _save_words(d / "tokenizer.json")
    (d / config_file).write_text(json.dumps({"eos_token": eos}))
    return d


@pytest.mark.parametrize("config_file", ["tokenizer_config.json", "special_tokens_map.json"])
def test_tokenizer_eos_fallback_past_the_vocabulary(tmp_path, config_file):
    """Without a generation_config.json eos, Text.load stops at the tokenizer's eos_token: its id (<big>: 96 in the
    tokenizer, one past the model's 96 rows) is checked as a generation_config.json id is, naming the file that
    names the token. Negative controls: the same tokenizer with eos </s> (id 2) passes; without a vocabulary
    (vocab_size None) 96 is taken as before; a generation_config.json eos makes the tokenizer's unused."""
    from archc.text import Text

    d = _words_dir(tmp_path, config_file, "<big>")
    with pytest.raises(UserError) as e:
        Text.load(d, V)
    msg = str(e.value)
    assert msg.startswith(f"{d / config_file}: eos_token: token id {V} is past the model's vocabulary "
                          f"(vocab_size {V}: ids 0 to {V - 1})") and "\n" not in msg, msg
    assert Text.load(d).eos_ids == [V]
    assert Text.load(d, V + 1).eos_ids == [V]
    (d / config_file).write_text(json.dumps({"eos_token": "</s>"}))
    assert Text.load(d, V).eos_ids == [2]
    (d / config_file).write_text(json.dumps({"eos_token": "<big>"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert Text.load(d, V).eos_ids == [2]


@pytest.mark.parametrize("eos, ok", [("<big>", False), ("</s>", True)])
def test_run_refuses_a_tokenizer_eos_it_could_never_meet(compiled, tmp_path, capsys, eos, ok):
    """archc run --prompt with no generation_config.json: the tokenizer's eos is the stop id, checked before any output."""
    m = _copy(compiled, tmp_path / "m")
    (m / "generation_config.json").unlink(missing_ok=True)
    _save_words(m / "tokenizer.json")
    (m / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    _run_prompt(m, capsys, ok, f"{m / 'tokenizer_config.json'}: eos_token: token id {V} is past")
