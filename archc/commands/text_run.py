"""`archc run DIR --prompt TEXT` / `--prompts FILE.jsonl` [--chat]: text in, text out (archc.text).

One --prompt streams its completion to stdout as it is generated. Several --prompt are one batch; each
completion is printed when the batch ends, separated by an empty line. --prompts reads JSONL (one object
per line with "prompt": text, or with --chat "messages": [{"role", "content"}, ...]) and writes one JSON
object per line: prompt, completion, ids, finish_reason ("eos" | "length"). Model text goes to stdout as
it is (never through rich markup); the timing line goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from archc.errors import UserError

# Prompts of a --prompts file per generate call: the KV cache and the prompt step's activations grow with
# batch x padded length. The logits do not for a model made now (generate feeds logits_start=-1 or the model
# is --logits last: [batch, 1, vocab]); an `all` export made before logits_start still computes
# [batch, prompt, vocab] in the prompt step (archc.runner.session.check_logits_size refuses it past the limit).
JSONL_BATCH = 16
MAX_JSONL_BYTES = 256 << 20


def read_jsonl(path: Path, chat: bool) -> list[dict]:
    """The --prompts file: [{'prompt': str} or {'messages': [...]}], one line each. Bad lines: one line naming file:line."""
    from archc.files import read_text

    # archc.files: a FIFO, device or directory is named as such (was 'no such file'), nothing is read from
    # it, and bytes that are not UTF-8 are one line (were a UnicodeDecodeError traceback)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"--prompts {path}: no such file (give a JSONL file, one {{\"prompt\": \"...\"}} per line)")
    text = read_text(path, f"--prompts {path}", limit=MAX_JSONL_BYTES)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"--prompts {path}:{n}: not JSON ({e.msg})") from None
        except RecursionError:  # [[[[...: was a RecursionError traceback
            raise UserError(f"--prompts {path}:{n}: JSON nested too deeply; each line is one {{\"prompt\": text}}") from None
        if not isinstance(obj, dict):
            raise UserError(f"--prompts {path}:{n}: each line must be a JSON object with \"prompt\"")
        if isinstance(obj.get("prompt"), str):
            rows.append({"prompt": obj["prompt"]})
        elif chat and _is_messages(obj.get("messages")):
            rows.append({"messages": obj["messages"]})
        else:
            want = "\"prompt\": text or \"messages\": [{\"role\": ..., \"content\": ...}]" if chat else "\"prompt\": text"
            raise UserError(f"--prompts {path}:{n}: give {want}")
    if not rows:
        raise UserError(f"--prompts {path}: no prompts in the file")
    return rows


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _tokenize(text, rows: list[dict], chat: bool, vocab: int, context: int, max_new_tokens: int) -> list[list[int]]:
    out = []
    for row in rows:
        label = f"--prompt {row['prompt'][:40]!r}" if "prompt" in row else "--prompts messages"
        ids = text.chat(row.get("messages", row.get("prompt"))) if chat else text.encode(row["prompt"])
        if not ids:
            raise UserError(f"{label}: the tokenizer gives no tokens for it; give some text")
        bad = [i for i in ids if i >= vocab]
        if bad:
            raise UserError(f"{text.model_dir}/tokenizer.json gives id {bad[0]}, outside the model's vocabulary of {vocab}; "
                            f"the tokenizer does not belong to this model")
        if len(ids) + max_new_tokens > context:
            raise UserError(f"{label}: {len(ids)} prompt tokens + --max-new-tokens {max_new_tokens} exceed the model's "
                            f"context of {context}; shorten the prompt or generate fewer tokens")
        out.append(ids)
    return out


def run_text(sess, model_dir: Path, prompts: list[str], prompts_file: Path | None, chat: bool, max_new_tokens: int,
             **sampling: Any) -> list:
    """Tokenize, generate (stopping at eos), print. Returns the runner results (one per generate call).
    A reader that closes the pipe early (`| head`) ends the run quietly, as other text tools do."""
    try:
        return _run_text(sess, model_dir, prompts, prompts_file, chat, max_new_tokens, **sampling)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again
        raise SystemExit(0) from None


def _run_text(sess, model_dir: Path, prompts: list[str], prompts_file: Path | None, chat: bool, max_new_tokens: int,
              **sampling: Any) -> list:
    from archc import text as textlib

    text = textlib.Text.load(model_dir, sess.vocab)  # its stop ids checked against the model's vocabulary
    jsonl = prompts_file is not None
    rows = read_jsonl(prompts_file, chat) if jsonl else [{"prompt": p} for p in prompts]
    if chat and text.chat_template is None:
        text.render_chat([])  # raises the one-line "no chat template" error
    out = sys.stdout
    stream = not jsonl and len(rows) == 1
    results = []
    for start in range(0, len(rows), JSONL_BATCH if jsonl else len(rows)):
        chunk = rows[start:start + (JSONL_BATCH if jsonl else len(rows))]
        ids = _tokenize(text, chunk, chat, sess.vocab, sess.max_seq_len, max_new_tokens)

        def on_text(row: int, piece: str) -> None:
            out.write(piece)
            out.flush()

        completions, res = textlib.generate(sess, text, ids, max_new_tokens, on_text=on_text if stream else None, **sampling)
        results.append(res)
        for i, (row, c) in enumerate(zip(chunk, completions)):
            if jsonl:
                rec = dict(row)
                rec.update(completion=c.text, ids=c.ids, finish_reason=c.finish_reason)
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            elif stream:
                out.write("\n")
            else:
                out.write(("\n" if i else "") + c.text + "\n")
        out.flush()
    return results
