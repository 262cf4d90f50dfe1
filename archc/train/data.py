"""Training data: one flat stream of token ids, split into a train part and a held-out validation tail.

Two sources, both ending as a numpy array of token ids:
- a flat token file (nanoGPT / litgpt style): raw little-endian uint16 or uint32 ids, read through
  np.memmap so a file larger than memory trains without being loaded;
- text files (.txt, or a folder of them, sorted by name) tokenized with a Hugging Face
  `tokenizer.json` through the `tokenizers` library; without one, a byte-level tokenizer (256 ids,
  one per byte) that `tokenizers` builds offline, so no download is ever needed.

Batches are windows of seq_len + 1 tokens (inputs and shifted targets) at stride seq_len. Their
order is a seeded permutation per epoch, so the whole data position is two integers (epoch,
cursor): saving them in a checkpoint is what makes a resumed run see exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from archc.errors import UserError


class TokenDType(str, Enum):
    auto = "auto"  # uint16 when the vocabulary fits (< 65536 ids), else uint32
    uint16 = "uint16"
    uint32 = "uint32"


TEXT_SUFFIXES = (".txt", ".text", ".md")


def token_dtype(choice: TokenDType, vocab_size: int) -> np.dtype:
    if choice is TokenDType.uint16:
        return np.dtype("<u2")
    if choice is TokenDType.uint32:
        return np.dtype("<u4")
    if choice is TokenDType.auto:
        return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")
    raise ValueError(f"unknown token dtype {choice!r}")


def is_text_source(path: Path) -> bool:
    if path.is_dir():
        return True
    return path.suffix.lower() in TEXT_SUFFIXES


def _readable(path: Path, label: str) -> None:
    if not path.exists():
        raise UserError(f"{label} {path}: no such file or folder; give a token file (.bin) or text (.txt / a folder of .txt)")
    if not os.access(path, os.R_OK):
        raise UserError(f"{label} {path}: not readable (permission denied); fix its permissions or copy it")


def read_token_file(path: Path, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """The file as a read-only memmap of ids, every id checked below `vocab_size` (chunk by chunk)."""
    _readable(path, "--data")
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise UserError(f"--data {path}: {size} bytes is not a whole number of {dtype.name} token ids; "
                        f"pass --data-dtype {'uint32' if dtype.itemsize == 2 else 'uint16'} if the file holds the other width")
    try:
        ids = np.memmap(path, dtype=dtype, mode="r")
    except OSError as e:
        raise UserError(f"--data {path}: cannot read: {e.strerror}") from None
    chunk = 1 << 24
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        top = int(part.max())
        if top >= vocab_size:
            at = start + int(np.argmax(part >= vocab_size))
            raise UserError(f"--data {path}: token id {int(ids[at])} at position {at} is >= vocab_size {vocab_size}; "
                            f"the file was tokenized for another vocabulary (or pass --data-dtype to read it as the other width)")
    return ids


def text_files(path: Path) -> list[Path]:
    _readable(path, "--data")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"--data {path}: folder has no text files ({', '.join(TEXT_SUFFIXES)}); add some or give a token file")
    return files


def byte_tokenizer_json() -> str:
    """A tokenizer.json mapping each byte to its own id (0..255), built by `tokenizers` offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for bytes
    byte_to_char = sorted(alphabet, key=lambda c: _byte_of(c))
    vocab = {ch: i for i, ch in enumerate(byte_to_char)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + k."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    if ord(ch) in printable:
        return ord(ch)
    others = [b for b in range(256) if b not in printable]
    return others[ord(ch) - 256]


def load_tokenizer(path: Path | None):
    """(tokenizers.Tokenizer, its JSON text): the given tokenizer.json, or the byte-level one."""
    from tokenizers import Tokenizer

    if path is None:
        text = byte_tokenizer_json()
    else:
        _readable(path, "--tokenizer")
        try:
            text = path.read_text(encoding="utf-8")
            Tokenizer.from_str(text)
        except (OSError, UnicodeDecodeError, Exception) as e:  # tokenizers raises its own Exception type
            raise UserError(f"--tokenizer {path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    return Tokenizer.from_str(text), text


def tokenize_text(files: list[Path], tokenizer, vocab_size: int, label: str) -> np.ndarray:
    ids: list[int] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--data {f}: not UTF-8 text; give UTF-8 text files or a token file") from None
        except OSError as e:
            raise UserError(f"--data {f}: cannot read: {e.strerror}") from None
        ids.extend(tokenizer.encode(text).ids)
    if not ids:
        raise UserError(f"--data {label}: the text is empty; give some text to train on")
    top = max(ids)
    if top >= vocab_size:
        raise UserError(f"--tokenizer: token id {top} is >= the spec's vocab_size {vocab_size}; "
                        f"pass --set vocab_size={tokenizer.get_vocab_size()} (the tokenizer's size) or a smaller tokenizer")
    return np.asarray(ids, dtype=np.int64)


@dataclass
class DataPosition:
    """Where the train stream stands: epoch number and the next window within that epoch's order."""

    epoch: int = 0
    cursor: int = 0


class TokenStream:
    """Windows of seq_len + 1 ids over `ids[start:stop]`, served in a seeded order per epoch."""

    def __init__(self, ids: np.ndarray, start: int, stop: int, seq_len: int, seed: int):
        self.ids, self.start, self.seq_len, self.seed = ids, start, seq_len, seed
        self.n_windows = max(0, (stop - start - 1) // seq_len)
        self.position = DataPosition()
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def window(self, k: int) -> np.ndarray:
        a = self.start + k * self.seq_len
        return np.asarray(self.ids[a:a + self.seq_len + 1], dtype=np.int64)

    def next_batch(self, batch: int) -> np.ndarray:
        """[batch, seq_len + 1] ids; advances the position."""
        rows = []
        for _ in range(batch):
            if self.position.cursor >= self.n_windows:
                self.position = DataPosition(self.position.epoch + 1, 0)
            rows.append(self.window(int(self._order_for(self.position.epoch)[self.position.cursor])))
            self.position.cursor += 1
        return np.stack(rows)

    def fixed_batches(self, batch: int, n_batches: int) -> list[np.ndarray]:
        """The first windows in file order (validation: the same batches at every evaluation)."""
        ks = list(range(min(self.n_windows, batch * n_batches)))
        return [np.stack([self.window(k) for k in ks[i:i + batch]]) for i in range(0, len(ks), batch)]


@dataclass
class TrainData:
    train: TokenStream
    val: TokenStream | None
    n_tokens: int
    tokenizer_json: str | None  # the tokenizer the ids came from (text data); None for a token file


def open_data(path: Path, *, vocab_size: int, seq_len: int, seed: int, val_fraction: float, batch: int,
              dtype: TokenDType = TokenDType.auto, tokenizer: Path | None = None) -> TrainData:
    """The data at `path`, split: the last `val_fraction` of the ids are held out for validation. A batch is
    drawn from the training split's windows (an epoch may wrap inside it, so the bound is one epoch's windows):
    a larger --batch would only repeat windows within one step, and a huge one built a list of that many rows
    until the machine ran out of memory, so it is one line, before the caller makes its run folder."""
    tokenizer_json = None
    if is_text_source(path):
        files = text_files(path)
        tok, tokenizer_json = load_tokenizer(tokenizer)
        ids = tokenize_text(files, tok, vocab_size, str(path))
    else:
        if tokenizer is not None:
            raise UserError(f"--tokenizer applies to text data; --data {path} is a token file (give a .txt file or folder)")
        ids = read_token_file(path, token_dtype(dtype, vocab_size), vocab_size)
    n = len(ids)
    n_val = int(n * val_fraction)
    if val_fraction > 0 and n_val < seq_len + 1:
        n_val = seq_len + 1
    split = n - n_val
    if split - 1 < seq_len:
        raise UserError(f"--data {path}: {n} tokens are too few for --seq-len {seq_len} with a validation split of "
                        f"{val_fraction:g}; give more data, a smaller --seq-len, or --val-fraction 0")
    train = TokenStream(ids, 0, split, seq_len, seed)
    if batch > train.n_windows:
        raise UserError(f"--batch {batch}: the training split of --data {path} holds {train.n_windows} windows of "
                        f"--seq-len {seq_len} tokens; use --batch {train.n_windows} or less, a smaller --seq-len, or more data")
    val = TokenStream(ids, split, n, seq_len, seed) if n_val else None
    return TrainData(train, val, n, tokenizer_json)
