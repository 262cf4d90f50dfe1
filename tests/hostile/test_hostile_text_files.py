"""archc.text reads a model directory's tokenizer files through archc.files, like every other input:
a FIFO, a directory, a symlink loop in place of any of them is one line naming the file (never a
hang, never silently skipped), and `archc compile` (copy_tokenizer_files) refuses the same files
instead of leaving them behind. (Unreadable files cannot be made here: the tests may run as root; a
symlink loop takes the same OSError path.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from archc.errors import UserError
from hostile_util import deadline

SIDE_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "chat_template.jinja", "chat_template.json"]
# what each hostile kind must say (archc.files' words)
KINDS = {"fifo": "FIFO", "directory": "is a directory", "loop": "symbolic link loop"}


def model_dir(d: Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    return d


def spoil(path: Path, kind: str) -> None:
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "loop":
        os.symlink(path.name, path)  # a link to itself


def one_line(e: UserError, path: Path, words: str) -> None:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg and words in msg, msg


def test_a_good_directory_loads_and_copies(tmp_path):
    """Negative control: the files as written load (eos from generation_config) and copy whole."""
    from archc.text import Text, copy_tokenizer_files

    d = model_dir(tmp_path / "m")
    t = Text.load(d)
    assert t.encode("hello world") == [2, 3] and t.eos_ids == [1]
    (tmp_path / "dst").mkdir()
    assert sorted(copy_tokenizer_files(d, tmp_path / "dst")) == ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "dst" / "tokenizer.json").read_bytes() == (d / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", SIDE_FILES)
def test_hostile_side_file_is_one_line(tmp_path, name, kind):
    from archc.text import Text, copy_tokenizer_files

    d = model_dir(tmp_path / "m")
    spoil(d / name, kind)
    with deadline(20):
        with pytest.raises(UserError) as e:
            Text.load(d)
    one_line(e.value, d / name, KINDS[kind])
    (tmp_path / "dst").mkdir()
    with deadline(20):
        with pytest.raises(UserError) as e:
            copy_tokenizer_files(d, tmp_path / "dst")
    one_line(e.value, d / name, KINDS[kind])


def test_cli_run_names_the_loop(tmp_path, capsys):
    """Through the CLI: exit status 2, one line (`archc run` checks the tokenizer before the model)."""
    from hostile_util import in_process, refused

    d = model_dir(tmp_path / "m")
    spoil(d / "tokenizer.json", "loop")
    with deadline(20):
        refused(in_process(["run", d, "--prompt", "hello"], capsys), "tokenizer.json", "symbolic link loop")


# ---- the --prompts file (archc.commands.text_run.read_jsonl) ------------------------------------

def _prompts_file(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / "p.jsonl"
    if kind == "binary":
        p.write_bytes(b"\xd6\xff" + bytes(range(256)) * 4)
    elif kind == "nested":
        p.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "dev-zero":
        os.symlink("/dev/zero", p)
    else:
        spoil(p, kind)
    return p


@pytest.mark.parametrize("kind, words", [
    ("binary", "not UTF-8 text (byte 0)"),  # was a UnicodeDecodeError traceback
    ("nested", ":1: JSON nested too deeply"),  # was a RecursionError traceback
    ("fifo", "FIFO"),  # these three said 'no such file'
    ("directory", "is a directory"),
    ("dev-zero", "character device"),
    ("loop", "symbolic link loop"),
])
def test_hostile_prompts_file_is_one_line(tmp_path, kind, words):
    from archc.commands.text_run import read_jsonl

    p = _prompts_file(tmp_path, kind)
    with deadline(20):
        with pytest.raises(UserError) as e:
            read_jsonl(p, chat=False)
    one_line(e.value, p, words)
    assert str(e.value).startswith(f"--prompts {p}")


def test_prompts_file_negative_control(tmp_path):
    from archc.commands.text_run import read_jsonl

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hello"}\n\n{"prompt": "w\\u00f6rld"}\n')
    assert read_jsonl(p, chat=False) == [{"prompt": "hello"}, {"prompt": "wörld"}]
