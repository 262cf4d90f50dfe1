"""Text in, text out: a model directory's tokenizer (Hugging Face `tokenizers`, tokenizer.json), its
chat template (tokenizer_config.json, rendered with jinja2 the way transformers renders it), its stop
ids (generation_config.json), and incremental detokenization for streaming.

    from archc.text import Text
    t = Text.load("out/model")                 # UserError (one line) when the directory has no tokenizer.json
    ids = t.encode("Hello")                     # the tokenizer's own special tokens (its post-processor)
    ids = t.chat("Hello")                       # --chat: the template with add_generation_prompt, no extra specials
    d = t.detokenizer(); d.push(id) -> str      # the text that id made final ('' while a UTF-8 sequence is open)

Files a model directory can carry (TOKENIZER_FILES): `archc compile` of a Hugging Face directory copies
them (copy_tokenizer_files); a model trained by archc writes them with save_tokenizer. Light: this
module imports neither torch nor onnxruntime; `tokenizers` and `jinja2` load only when used.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.errors import UserError
from archc.files import read_bytes, read_json, read_text, stat_path

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 saves the template here, beside the config
# What `archc compile HF_DIR` copies: the tokenizer (tokenizers' own file), what transformers reads
# around it (special tokens, chat template), and the stop ids.
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json", "added_tokens.json",
                   CHAT_TEMPLATE_FILE, "chat_template.json", GENERATION_CONFIG)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
MAX_SIDE_FILE = 64 << 20  # a tokenizer.json is a few MB; anything far past that is not one


# Every file this module reads goes through archc.files (read_bytes and the helpers on it): a FIFO, a
# directory, a device, a missing or unreadable file, a symlink loop or a name too long is one line
# naming the file, as for every other input archc reads.


def _present(path: Path) -> bool:
    """Is there something at `path`? Nothing (or a dangling link) is False; a name archc cannot even
    stat (a symlink loop, too long a name, a parent without permission) is one line."""
    return stat_path(path) is not None


def _json_object(path: Path, what: str) -> dict:
    data = read_json(path, limit=MAX_SIDE_FILE)
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a JSON object, found {type(data).__name__}")
    return data


# ---- carrying a tokenizer into a model directory -----------------------------------------------


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy the TOKENIZER_FILES that `src_dir` has (regular files only) into `dst_dir`; names copied.
    Without a generation_config.json, one is written from config.json's bos/eos/pad ids, as
    transformers derives its generation config from the model config."""
    src, dst = Path(src_dir), Path(dst_dir)
    copied = []
    for name in TOKENIZER_FILES:
        p = src / name
        if _present(p):  # a FIFO or directory under a tokenizer file's name is refused, not skipped
            (dst / name).write_bytes(read_bytes(p, limit=MAX_SIDE_FILE))
            copied.append(name)
    config = stat_path(src / "config.json")
    if GENERATION_CONFIG not in copied and config is not None and stat.S_ISREG(config.st_mode):
        cfg = _json_object(src / "config.json", "config.json")
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
        if gen:
            (dst / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2) + "\n")
            copied.append(GENERATION_CONFIG)
    return copied


def save_tokenizer(tokenizer: Any, out_dir: str | Path, *, bos_token: str | None = None, eos_token: str | None = None,
                   pad_token: str | None = None, chat_template: str | None = None) -> list[str]:
    """The hook for a model archc trained: write its `tokenizers.Tokenizer` into the model directory as
    tokenizer.json + tokenizer_config.json (the special tokens by name, the chat template if any) +
    generation_config.json (the eos/bos/pad ids `archc run` stops at and genai reads). Each special
    token must be in the tokenizer's vocabulary. Returns the names written."""
    out = Path(out_dir)
    ids = {}
    for key, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
        if tok is None:
            continue
        i = tokenizer.token_to_id(tok)
        if i is None:
            raise UserError(f"{key}_token {tok!r} is not in the tokenizer's vocabulary; add it as a special token when training")
        ids[key] = (tok, i)
    tokenizer.save(str(out / TOKENIZER_JSON))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, (tok, _) in ids.items():
        config[f"{key}_token"] = tok
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    gen = {f"{key}_token_id": i for key, (_, i) in ids.items()}
    (out / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2) + "\n")
    return [TOKENIZER_JSON, TOKENIZER_CONFIG, GENERATION_CONFIG]


def is_int(v: Any) -> bool:
    """A JSON integer: an int that is not a bool (`true` is no token id)."""
    return isinstance(v, int) and not isinstance(v, bool)


LIST_ID_FIELDS = ("eos_token_id",)  # transformers' GenerationConfig: eos_token_id is an int or a list; bos/pad an int


def check_in_vocab(ids: int | list[int] | None, vocab_size: int | None, field: str, where: str) -> None:
    """A token id archc uses (feeds as bos/pad, stops at as eos, writes into an export) must be a row of the
    model's vocabulary: one at or past `vocab_size` is one line naming the file and field, exit 2 (an eos
    past it never matches, so generation never stops; a bos/pad past it indexes past the embedding).
    vocab_size None: nothing to check against."""
    if vocab_size is None or ids is None:
        return
    for i in ids if isinstance(ids, list) else [ids]:
        if i >= vocab_size:
            raise UserError(f"{where}: {field}: token id {i} is past the model's vocabulary (vocab_size {vocab_size}: "
                            f"ids 0 to {vocab_size - 1}); fix the file, or remove the field")


def generation_id(value: Any, field: str, where: str, vocab_size: int | None = None) -> int | list[int] | None:
    """One `<role>_token_id` of generation_config.json (the policy archc.hf.export._special_token_id applies
    to tokenizer_config.json's tokens): null is no token, and so are an empty list and a negative integer
    (older Hugging Face conversions, e.g. LLaMA's, write pad_token_id -1 for "unset"; transformers only warns);
    a non-negative integer is that id; a list of them where transformers allows one (LIST_ID_FIELDS).
    Anything else (a string, a bool, a float, a list for bos/pad, a list holding a non-id) is one line naming
    the file and field, exit 2; so is an id at or past `vocab_size` (check_in_vocab), given by a caller
    that will use the id with a model of that vocabulary."""
    if value is None or value == [] or (is_int(value) and value < 0):
        return None

    def is_id(v: Any) -> bool:
        return is_int(v) and v >= 0

    if is_id(value) or (field in LIST_ID_FIELDS and isinstance(value, list) and all(map(is_id, value))):
        check_in_vocab(value, vocab_size, field, where)
        return value
    allowed = "a token id (a non-negative integer)" + (", a list of them" if field in LIST_ID_FIELDS else "") + " or null"
    raise UserError(f"{where}: {field}: expected {allowed}; found {json.dumps(value)[:80]}; fix the file, or remove the field")


def special_token_ids(model_dir: str | Path, vocab_size: int | None = None) -> dict[str, list[int]]:
    """{'bos': [...], 'eos': [...], 'pad': [...]} from the directory's generation_config.json (empty lists
    when it has none): what genai_config.json and the stop condition read; with `vocab_size`, each id is
    checked against the vocabulary of the model that will use it (generation_id)."""
    p = Path(model_dir) / GENERATION_CONFIG
    if not _present(p):
        return {"bos": [], "eos": [], "pad": []}
    gen = _json_object(p, GENERATION_CONFIG)
    out = {}
    for k in ("bos", "eos", "pad"):
        ids = generation_id(gen.get(f"{k}_token_id"), f"{k}_token_id", str(p), vocab_size)
        out[k] = [] if ids is None else ids if isinstance(ids, list) else [ids]
    return out


def check_source_token_ids(src_dir: str | Path, vocab_size: int) -> None:
    """The bos/eos/pad ids copy_tokenizer_files would carry from `src_dir` into a model of `vocab_size`
    tokens (its generation_config.json, else config.json's ids), checked before the export does any work,
    so a refusal names the source file rather than the copy."""
    src = Path(src_dir)
    if _present(src / GENERATION_CONFIG):
        special_token_ids(src, vocab_size)
        return
    config = stat_path(src / "config.json")
    if config is not None and stat.S_ISREG(config.st_mode):
        cfg = _json_object(src / "config.json", "config.json")
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            generation_id(cfg.get(k), k, str(src / "config.json"), vocab_size)


# ---- reading text ------------------------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@dataclass
class Text:
    """A model directory's tokenizer, chat template and stop ids."""

    model_dir: Path
    tokenizer: Any  # tokenizers.Tokenizer
    config: dict = field(default_factory=dict)  # tokenizer_config.json (+ special_tokens_map.json)
    chat_template: str | None = None
    eos_ids: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, model_dir: str | Path, vocab_size: int | None = None) -> "Text":
        """The directory's tokenizer and stop ids; with `vocab_size` (the session's), a generation_config.json
        id past the vocabulary is one line (special_token_ids), and so is the tokenizer's eos token's id where
        that is the stop id (no eos_token_id in generation_config.json)."""
        d = Path(model_dir)
        path = d / TOKENIZER_JSON
        if not _present(path):
            raise UserError(f"{d}: no {TOKENIZER_JSON}; copy the model's tokenizer.json (and tokenizer_config.json for "
                            f"--chat, generation_config.json for its stop ids) into {d}, or give token ids with --prompt-ids")
        raw = read_text(path, limit=MAX_SIDE_FILE)
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(raw)
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type for any bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a tokenizer the `tokenizers` library reads ({first})") from None
        config: dict = {}
        stm = d / "special_tokens_map.json"
        if _present(stm):
            config.update(_json_object(stm, "special_tokens_map.json"))
        tc = _json_object(d / TOKENIZER_CONFIG, TOKENIZER_CONFIG) if _present(d / TOKENIZER_CONFIG) else {}
        config.update(tc)
        text = cls(d, tok, config, _chat_template(d, config))
        text.eos_ids = special_token_ids(d, vocab_size)["eos"]
        if not text.eos_ids:  # no generation config: the tokenizer's own eos token, if it names one
            eos = _token_text(config.get("eos_token"))
            eos_id = None if eos is None else tok.token_to_id(eos)
            if eos_id is not None:
                # checked as a generation_config.json id is: a tokenizer with more ids than the model's rows
                # gives an eos that is never generated, so generation would never stop
                source = TOKENIZER_CONFIG if "eos_token" in tc else "special_tokens_map.json"
                check_in_vocab(eos_id, vocab_size, "eos_token", str(d / source))  # export-hf's words
                text.eos_ids = [eos_id]
        return text

    def special_tokens(self) -> dict[str, str]:
        """What transformers passes a chat template besides the messages (its special_tokens_map)."""
        out = {}
        for key in SPECIAL_TOKEN_KEYS:
            t = _token_text(self.config.get(key))
            if t is not None:
                out[key] = t
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids with the tokenizer's own special tokens (e.g. a BOS from its post-processor), as
        transformers' tokenizer(text) gives them."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def render_chat(self, messages: list[dict]) -> str:
        if self.chat_template is None:
            raise UserError(f"{self.model_dir}: --chat needs a chat template (tokenizer_config.json's chat_template or "
                            f"{CHAT_TEMPLATE_FILE}); this model has none, so give plain --prompt text")
        return render_chat_template(self.chat_template, messages, add_generation_prompt=True, **self.special_tokens())

    def chat(self, user: str | list[dict]) -> list[int]:
        """The chat template applied to one user message (or a message list), with the generation prompt,
        tokenized without adding special tokens again (the template writes them), as transformers'
        apply_chat_template(..., add_generation_prompt=True) does."""
        messages = [{"role": "user", "content": user}] if isinstance(user, str) else user
        return list(self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def detokenizer(self) -> "Detokenizer":
        return Detokenizer(self.tokenizer)


def _chat_template(d: Path, config: dict) -> str | None:
    jinja = d / CHAT_TEMPLATE_FILE
    if _present(jinja):
        return read_text(jinja, limit=MAX_SIDE_FILE)
    t = config.get("chat_template")
    if t is None and _present(d / "chat_template.json"):
        t = _json_object(d / "chat_template.json", "chat_template.json").get("chat_template")
    if t is None or isinstance(t, str):
        return t
    if isinstance(t, list):  # named templates: transformers uses "default"
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise UserError(f"{d / TOKENIZER_CONFIG}: chat_template must be a string or a list of named templates with a 'default'")


def render_chat_template(template: str, messages: list[dict], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Render a Hugging Face chat template the way transformers does (utils/chat_template_utils.py): a
    jinja2 ImmutableSandboxedEnvironment (templates are untrusted code from a model's files) with
    trim_blocks, lstrip_blocks and loopcontrols, transformers' tojson (no HTML escaping),
    raise_exception and strftime_now; messages, add_generation_prompt and the special tokens as
    variables. A template error is one line."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime

        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
    except jinja2.exceptions.TemplateError as e:
        raise UserError(f"chat template: {type(e).__name__}: {e}") from None


class Detokenizer:
    """Incremental detokenization (the prefix/read-offset scheme of vLLM and text-generation-inference):
    each push decodes a short window of recent ids twice, with and without the newest, and returns the
    difference. The window keeps the context a decoder needs (a SentencePiece piece's leading space, a
    byte-level BPE character split over several ids); a difference that ends in U+FFFD is an open UTF-8
    sequence and is held back until a later id completes it. The pieces joined equal decode(all ids)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # ids before this are already emitted
        self.emitted: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            delta = now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.emitted.append(delta)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held (an id sequence that ended inside a character, as decode renders it)."""
        full = self._decode(self.ids)
        done = "".join(self.emitted)
        rest = full[len(done):] if full.startswith(done) else ""
        if rest:
            self.emitted.append(rest)
        return rest


# ---- generating text ---------------------------------------------------------------------------


@dataclass
class Completion:
    ids: list[int]  # generated ids, up to and including the eos id that stopped it
    text: str  # decode(ids), special tokens skipped
    finish_reason: str  # "eos" | "length"


def generate(session: Any, text: Text, prompts: list[list[int]], max_new_tokens: int, *, on_text: Any = None,
             **sampling: Any) -> tuple[list[Completion], Any]:
    """Run session.generate on tokenized prompts, stopping each row at its first eos id (generation ends
    when every row has one, or at max_new_tokens). on_text(row, piece) gets each row's text as it is
    generated (incremental detokenization). Returns the completions and the runner's GenerationResult."""
    eos = set(text.eos_ids)
    B = len(prompts)
    done = [False] * B
    detok = [text.detokenizer() for _ in range(B)]

    def on_token(tok) -> bool:
        for b in range(B):
            if done[b]:
                continue
            t = int(tok[b])
            done[b] = t in eos  # the eos id is part of the completion, as in transformers (decode skips it if special)
            piece = detok[b].push(t)
            if piece and on_text is not None:
                on_text(b, piece)
        return all(done)

    res = session.generate(prompts, max_new_tokens, on_token=on_token, **sampling)
    out = []
    for b, ids in enumerate(res.ids):
        rest = detok[b].flush()
        if rest and on_text is not None:
            on_text(b, rest)
        cut = next((i for i, t in enumerate(ids) if t in eos), None)
        kept = ids if cut is None else ids[:cut + 1]
        out.append(Completion(kept, text.decode(kept), "length" if cut is None else "eos"))
    return out, res
