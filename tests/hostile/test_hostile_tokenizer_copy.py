"""The commands that carry a tokenizer along, `archc compile HF_DIR` (archc.text.copy_tokenizer_files)
and `archc export-hf DIR` (archc.hf.export), read its files through archc.files: a FIFO, a directory
or a symlink loop under a tokenizer file's name is one line naming it, exit 2, and no output directory
(both used to skip such a file silently and write a model without it; a FIFO generation_config.json
was read by neither). The good directory exporting with its files is the negative control."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import save_tiny_hf_llama
from hostile_util import deadline, in_process, refused

KINDS = {"fifo": "FIFO", "directory": "is a directory", "loop": "symbolic link loop"}
TOKENIZER = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<pad>"}, {"id": 1, "content": "<s>"}],
             "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<s>": 1, "a": 2}, "unk_token": "<pad>"}}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny Hugging Face llama directory (transformers' own save) with tokenizer files."""
    d = save_tiny_hf_llama(tmp_path_factory.mktemp("tokcopy") / "hf", layers=1)
    (d / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "pad_token": "<pad>"}))
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        os.link(p, dst / p.name)
    return dst


def _spoil(path: Path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink(path.name, path)


def test_good_directory_carries_its_tokenizer(hf_dir, tmp_path, capsys):
    code, out, err = in_process(["compile", hf_dir, "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    code, out, err = in_process(["export-hf", tmp_path / "m", "-o", tmp_path / "back"], capsys)
    assert code == 0, err
    assert (tmp_path / "back" / "tokenizer_config.json").read_bytes() == (hf_dir / "tokenizer_config.json").read_bytes()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_compile_refuses_a_hostile_tokenizer_file(hf_dir, tmp_path, capsys, name, kind):
    src = _copy(hf_dir, tmp_path / "src")
    _spoil(src / name, kind)
    with deadline(60):
        refused(in_process(["compile", src, "-o", tmp_path / "m"], capsys), name, KINDS[kind])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"])
def test_export_hf_refuses_a_hostile_tokenizer_file(hf_dir, tmp_path, capsys, name, kind):
    code, _, err = in_process(["compile", hf_dir, "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    _spoil(tmp_path / "m" / name, kind)
    with deadline(60):
        refused(in_process(["export-hf", tmp_path / "m", "-o", tmp_path / "out"], capsys), name, KINDS[kind])
    assert not (tmp_path / "out").exists()
