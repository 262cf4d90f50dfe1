"""A spec and its graph weights as a Hugging Face model directory: the inverse of `import_hf`.

    from archc.hf.export import hf_config, export_hf
    family, config = hf_config(spec)                  # or hf_config(spec, "gpt_neox") to force the type
    export_hf(graph, "out/", get=lambda full: state[full])

What a model type can hold is decided by the import itself: each family's `to_config` writes the
config fields from the spec, then the config is imported back (`config_to_spec`) and the two resolved
specs are compared axis by axis. Any axis that comes back different is one the type cannot hold, and
the first such axis is the refusal's message. So export and import cannot disagree about what a
config means, and a family needs no separate list of refusals.

Tensors go through the same per-family table import-hf reads (archc.hf.<family>.<family>_tensors):
each Rule's layout has a `join` that is the exact inverse of its `split`, so import-hf of the output
gives back the graph tensors bit for bit. A spec whose RoPE pairs dims differently from the chosen
type (interleaved vs half) is held through a fixed permutation of the q and k rows (common._RotaryRows).

Axes that do not change what the model computes are not compared: name, description, reference,
tokenizer, init, training, attention.kernel; dtype is what the checkpoint is written in (--dtype).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archc import text as _text
from archc.dtypes import DType
from archc.errors import UserError
from archc.files import read_bytes, stat_path
from archc.hf import FAMILIES, SUPPORTED_TYPES, config_to_spec
from archc.hf.common import Cfg, Family, Rule

# Top-level spec fields and dotted axes that do not change what the model computes (module docstring).
_NOT_COMPARED_TOP = {"name", "description", "reference", "tokenizer", "init", "training", "dtype"}
_NOT_COMPARED = {"attention.kernel",
                 "position.rotary_fraction",  # rotary_dim is compared; the fraction is the same width rounded
                 "position.style"}  # any RoPE type holds either style through the q/k row permutation

DTYPES = tuple(d.value for d in DType)  # the checkpoint's dtype, spelled as in config.json ("float16")
_SAFETENSORS_DTYPE = {DType.float32: "F32", DType.float16: "F16", DType.bfloat16: "BF16"}

# Files of a tokenizer copied from a source directory: what `archc compile` copies (archc.text; its
# generation_config.json is copied or written by export_hf) and the files of transformers' slow
# tokenizers (SentencePiece model, BPE vocab and merges), which a Hugging Face directory may carry instead.
SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt")
TOKENIZER_FILES = tuple(n for n in _text.TOKENIZER_FILES if n != _text.GENERATION_CONFIG) + SLOW_TOKENIZER_FILES


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def _float32(x: float) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<f", x))[0]


def _architecture(resolved: dict) -> dict[str, Any]:
    flat = _flat({k: v for k, v in resolved.items() if k not in _NOT_COMPARED_TOP})
    return {k: v for k, v in flat.items() if k not in _NOT_COMPARED}


def _comparable(resolved: dict) -> dict[str, Any]:
    """_architecture with each axis as what the model computes with, where spellings differ."""
    out = _architecture(resolved)
    m = out.get("embedding.multiplier")
    if m is not None:
        # The factor the embedding is multiplied by, not its spelling: a number equal to sqrt(d_model) is
        # Gemma's scale. transformers holds that scale as a float32 scalar (GemmaTextScaledWordEmbedding),
        # so two spellings that round to the same float32 are the same model.
        out["embedding.multiplier"] = _float32(math.sqrt(resolved["d_model"]) if m == "sqrt_d_model" else float(m))
    return out


def _show(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (bool, list)) else str(value)


def _differences(spec, family: Family, config: dict) -> list[str]:
    """The axes of `spec` that `config` (written by family.to_config) does not hold, as message parts."""
    from archc.loader import spec_from_dict

    try:
        back = spec_from_dict(config_to_spec(config, name=spec.name), source=f"{family.model_type} config")
    except UserError as e:  # a config the import refuses: its message names the field
        return [str(e)]
    want, got = _architecture(spec.to_yaml_dict()), _architecture(back.to_yaml_dict())
    same_a, same_b = _comparable(spec.to_yaml_dict()), _comparable(back.to_yaml_dict())
    out = []
    for axis in dict.fromkeys([*want, *got]):
        if same_a.get(axis) != same_b.get(axis):
            gives = _show(got.get(axis))
            if got.get(axis) == "sqrt_d_model":
                gives += f" = {same_b[axis]:.7g}"
            out.append(f"{axis}={_show(want.get(axis))} ({family.model_type} would give {gives})")
    return out


def _config(spec, family: Family, dtype: str) -> dict:
    body = family.to_config(spec)
    return {"model_type": family.model_type, "architectures": [family.architecture], **body, "dtype": dtype}


def _reference_type(spec) -> str | None:
    """The model type a spec imported by import-hf came from ('transformers model_type X' in its reference)."""
    m = re.search(r"transformers model_type (\w+)", spec.reference or "")
    return m.group(1) if m and m.group(1) in FAMILIES else None


def hf_config(spec, model_type: str | None = None, dtype: str | None = None) -> tuple[Family, dict]:
    """(family, config.json data) for `spec`; the type is `model_type` or the first in SUPPORTED_TYPES
    (the type the spec was imported from first) that holds every axis. Refusals are one-line UserErrors."""
    dtype = dtype or spec.dtype.value
    if model_type is not None:
        family = FAMILIES.get(model_type)
        if family is None:
            raise UserError(f"--model-type {model_type}: not a supported type; choose one of {', '.join(SUPPORTED_TYPES)}")
        config = _config(spec, family, dtype)
        problems = _differences(spec, family, config)
        if problems:
            raise UserError(f"--model-type {model_type} cannot hold {spec.name}'s {problems[0]}{_more(len(problems) - 1)}")
        return family, config
    order = list(SUPPORTED_TYPES)
    hint = _reference_type(spec)
    if hint:
        order.remove(hint)
        order.insert(0, hint)
    misses: list[tuple[int, str, str]] = []
    for t in order:
        family = FAMILIES[t]
        config = _config(spec, family, dtype)
        problems = _differences(spec, family, config)
        if not problems:
            return family, config
        misses.append((len(problems), t, problems[0]))
    n, t, first = min(misses, key=lambda m: m[0])  # the closest type, first in order among equals
    raise UserError(f"{spec.name}: no Hugging Face model type holds this spec; the closest, {t}, cannot hold "
                    f"{first}{_more(n - 1)}")


def _more(n: int) -> str:
    return "" if n == 0 else f" (and {n} more {'axis' if n == 1 else 'axes'})"


def tensor_rules(family: Family, config: dict, spec) -> dict[str, Rule]:
    """{checkpoint name: Rule} for this config and spec: the table import-hf reads, in checkpoint order."""
    return family.tensors(Cfg(config, family.defaults, "config.json"), spec)


def hf_state(graph, family: Family, config: dict, get: Callable[[str], Any]) -> dict:
    """{checkpoint name: tensor} (in memory; export_hf streams instead) from graph tensors `get(full)`."""
    return {name: rule.join(tuple(get(t) for t in rule.targets)) for name, rule in tensor_rules(family, config, graph.spec).items()}


# ------------------------------------------------------------------------------------------------
# Weight sources: graph parameter name -> tensor, one at a time


def owners(graph) -> dict[str, tuple[str, str]]:
    """{full parameter name: (owning node, local name)} for every owned parameter."""
    return {full: (node, full[len(node) + 1:]) for full, _, node in graph.params()}


def seeded_source(graph) -> Callable[[str], Any]:
    """The spec's seeded init (archc.weights), the same numbers every archc backend starts from."""
    from archc.weights import init_tensor

    own = owners(graph)
    return lambda full: init_tensor(graph, *own[full])


def safetensors_source(graph, path: Path, label: str = "--weights") -> Callable[[str], Any]:
    """A safetensors file of graph parameter names (archc train's checkpoints, `compile --weights`)."""
    from safetensors import safe_open

    from archc.files import refuse_duplicate_tensor_names, require_regular_file

    require_regular_file(path, f"{label} {path}", "a safetensors file of archc parameter names")  # a FIFO hung safe_open
    refuse_duplicate_tensor_names(path, f"{label} {path}")  # safe_open keeps the last of two entries with one name
    try:
        f = safe_open(str(path), framework="pt")
        keys = set(f.keys())
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{label} {path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    shapes = {full: shape for full, shape, _ in graph.params()}
    missing = sorted(set(shapes) - keys)
    if missing:
        raise UserError(f"{label} {path}: missing {len(missing)} parameter(s) of the spec, e.g. {missing[0]}; the file must "
                        "hold archc's graph parameter names (see `archc show`)")

    def get(full: str):
        t = f.get_tensor(full)
        if tuple(t.shape) != tuple(shapes[full]):
            raise UserError(f"{label} {path}: {full} has shape {list(t.shape)}, the spec needs {list(shapes[full])}")
        return t

    return get


# ------------------------------------------------------------------------------------------------
# Writing the directory


def write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: str,
                      produce: Callable[[str], Any]) -> int:
    """A safetensors file written one tensor at a time: the header (every name, shape and offset, known
    up front) first, then each tensor `produce(name)` cast to `dtype`, so memory stays near one tensor.
    Same inputs -> same bytes. Returns the data bytes written."""
    import torch

    item = DType(dtype).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        n = math.prod(shape) * item
        header[name] = {"dtype": _SAFETENSORS_DTYPE[DType(dtype)], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    want = DType(dtype).to_torch()
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name, shape in entries:
            t = produce(name).detach().to("cpu", want).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {list(t.shape)}, planned {list(shape)}")
            fh.write(memoryview((t.view(torch.int16) if want is torch.bfloat16 else t).numpy()).cast("B"))
    return offset


# Sharding as transformers' save_pretrained does it (huggingface_hub.split_torch_state_dict_into_shards):
# tensors in order, a new shard when the next one would pass the limit, a tensor larger than the limit
# alone in its shard; model-00001-of-0000N.safetensors and model.safetensors.index.json (sorted keys,
# indent 2). One shard is model.safetensors with no index. The default is transformers 5.x's.
DEFAULT_MAX_SHARD_SIZE = "50GB"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3,  # huggingface_hub's (decimal)
               "TIB": 2**40, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10}


def parse_shard_size(text: str | int) -> int:
    """'50GB', '500MB', '2GiB' or a number of bytes -> bytes (units as huggingface_hub's, plus the binary ones)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B)?\s*", str(text), re.IGNORECASE)
        if m is None:
            raise UserError(f"--max-shard-size {text}: give a size such as 5GB, 500MB, 2GiB or a number of bytes")
        value = int(float(m.group(1)) * (_SIZE_UNITS[m.group(2).upper()] if m.group(2) else 1))
    if value < 1:
        raise UserError(f"--max-shard-size {text}: must be at least 1 byte")
    return value


def plan_shards(entries: list[tuple[str, tuple[int, ...]]], itemsize: int, max_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors split into shards the way huggingface_hub splits a state dict (see above)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = []
    current: list[tuple[str, tuple[int, ...]]] = []
    size = 0
    for name, shape in entries:
        n = math.prod(shape) * itemsize
        if n > max_bytes:
            shards.append([(name, shape)])
            continue
        if size + n > max_bytes and current:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    if current:
        shards.append(current)
    return shards or [[]]


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SAFE_WEIGHTS_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


# The source directory's side files are read through archc.files, as archc.text reads them: absent is
# fine; a FIFO, a directory, a symlink loop, an unreadable file or broken JSON under a side file's name is
# one line naming it (it was skipped silently, and the export came out without its tokenizer).


def _side_bytes(p: Path) -> bytes | None:
    """A side file's bytes, None when nothing is there."""
    if stat_path(p) is None:
        return None
    return read_bytes(p, limit=_text.MAX_SIDE_FILE)


def _read_json(p: Path) -> dict | None:
    """A side file's JSON object, None when nothing is there."""
    if stat_path(p) is None:
        return None
    return _text._json_object(p, p.name)


def _vocab(tok: dict) -> dict[str, int]:
    """tokenizer.json's token -> id: the model's vocabulary (a dict for BPE/WordPiece/WordLevel, a list of
    [piece, score] pairs for Unigram, where the id is the position) and its added tokens."""
    vocab: dict[str, int] = {}
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    model_vocab = model.get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update({k: v for k, v in model_vocab.items() if _text.is_int(v)})
    elif isinstance(model_vocab, list):
        vocab.update({e[0]: i for i, e in enumerate(model_vocab) if isinstance(e, list) and e and isinstance(e[0], str)})
    for added in tok.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("content"), str) and isinstance(added.get("id"), int):
            vocab[added["content"]] = added["id"]
    return vocab


def _special_token_id(value: Any, vocab: dict[str, int], ids: set[int], where: str) -> int | None:
    """One `<role>_token` entry of tokenizer_config.json / special_tokens_map.json as an id:
    - null: the tokenizer has no such token (transformers writes `"pad_token": null`): None;
    - a string, or an AddedToken dict {"content": string, ...}: its id in tokenizer.json, None when the
      vocabulary does not list it (a Unigram or slow tokenizer's pieces may live elsewhere: no id known);
    - an integer: taken as the id itself when tokenizer.json has that id;
    anything else (a list, a number that is not an id, a bool, a dict without a string content) is a
    malformed file: one line naming it and the field, exit 2 (it was skipped, and the export's
    config.json said null with no word why)."""
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        value = value["content"]
    if isinstance(value, str):
        return vocab.get(value)
    if _text.is_int(value):
        if value in ids:
            return value
        raise UserError(f"{where}: token id {value} is not in tokenizer.json's vocabulary; give the token's text, "
                        "or the id of a token tokenizer.json lists")
    raise UserError(f"{where}: expected the token's text, an AddedToken object with a string \"content\", a token id "
                    f"or null; found {json.dumps(value)[:80]}; fix the file, or remove it to export without token ids")


def special_token_ids(source_dir: Path | None, vocab_size: int | None = None) -> dict[str, Any]:
    """{'bos_token_id': ..., 'eos_token_id': ..., 'pad_token_id': ...} of the source directory: its
    generation_config.json's, else the ids its tokenizer names (the tokens of tokenizer_config.json,
    then special_tokens_map.json for a role tokenizer_config.json does not mention, as archc.text.Text
    merges them; looked up in tokenizer.json: _special_token_id); {} without either. With `vocab_size`
    (the exported model's), an id that would be written and is past the vocabulary is one line naming
    the file and field (archc.text.check_in_vocab): the export never writes one."""
    if source_dir is None:
        return {}
    out: dict[str, Any] = {}
    path = source_dir / "generation_config.json"
    gen = _read_json(path)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        # archc.text.generation_id: an id, a list of them for eos, or null; anything else one line (it was skipped,
        # config.json said null while the copied generation_config.json kept the value)
        ids = _text.generation_id(gen.get(key), key, str(path), vocab_size) if gen is not None else None
        if ids is not None:
            out[key] = ids
    named = [(p, conf) for p in (source_dir / "tokenizer_config.json", source_dir / "special_tokens_map.json")
             if (conf := _read_json(p)) is not None]
    tok = _read_json(source_dir / "tokenizer.json")
    if not named or tok is None:
        return out
    vocab = _vocab(tok)
    ids = set(vocab.values())
    for role in ("bos", "eos", "pad"):
        field = f"{role}_token"
        path, conf = next(((p, c) for p, c in named if field in c), (None, None))
        if path is None:
            continue
        i = _special_token_id(conf[field], vocab, ids, f"{path}: {field}")
        if i is not None and f"{role}_token_id" not in out:  # generation_config.json's id wins; this one is not written
            _text.check_in_vocab(i, vocab_size, field, str(path))
            out[f"{role}_token_id"] = i
    return out


def _check_space(out: Path, need: int) -> None:
    """Refuse up front when the checkpoint cannot fit on the output's file system."""
    where = Path(os.path.abspath(out))
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise UserError(f"-o {out}: the checkpoint needs {need / 2**30:.1f} GiB and {where} has {free / 2**30:.1f} GiB "
                        "free; free space, choose another disk, or a smaller --dtype")


@dataclass
class ExportHfResult:
    out_dir: Path
    model_type: str
    n_tensors: int
    data_bytes: int
    dtype: str
    copied: list[str]
    shards: int = 1


def export_hf(graph, out_dir: str | os.PathLike, get: Callable[[str], Any], *, model_type: str | None = None,
              dtype: str | None = None, force: bool = False, source_dir: Path | None = None,
              protect: tuple[Path, ...] = (), max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
              _fail_after: int | None = None) -> ExportHfResult:
    """Write config.json, model.safetensors (or shards of at most `max_shard_size` and their
    model.safetensors.index.json, as save_pretrained), generation_config.json (and the tokenizer files
    found in `source_dir`) into `out_dir`, atomically (archc.atomic.write_dir_atomic): refused unless new
    or empty, or `force`; never onto `protect` (the inputs). `get(full)` gives each graph parameter.
    `_fail_after` (tests): raise after that many tensors, to prove an interruption leaves nothing."""
    from archc.atomic import write_dir_atomic

    spec = graph.spec
    dtype = dtype or spec.dtype.value
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    max_bytes = parse_shard_size(max_shard_size)
    family, config = hf_config(spec, model_type, dtype)
    ids = special_token_ids(source_dir, spec.vocab_size)
    # without a tokenizer the ids are unknown: null, not the config class's defaults (GPT-2's 50256 may
    # not even be in the vocabulary)
    config.update({"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}, **ids)
    rules = tensor_rules(family, config, spec)
    shapes = {full: shape for full, shape, _ in graph.params()}

    def planned_shape(rule: Rule) -> tuple[int, ...]:
        import torch

        parts = tuple(torch.empty(shapes[t], device="meta") for t in rule.targets)
        return tuple(rule.join(parts).shape)

    entries = [(name, planned_shape(rule)) for name, rule in rules.items()]
    shards = plan_shards(entries, DType(dtype).itemsize, max_bytes)
    files = shard_names(len(shards))
    _check_space(Path(out_dir), sum(math.prod(shape) for _, shape in entries) * DType(dtype).itemsize)
    done = [0]

    def produce(name: str):
        if _fail_after is not None and done[0] >= _fail_after:
            raise RuntimeError("simulated interruption")
        done[0] += 1
        rule = rules[name]
        return rule.join(tuple(get(t) for t in rule.targets))

    copied: list[str] = []
    written = [0]

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for file, shard in zip(files, shards):
            written[0] += write_safetensors(tmp / file, shard, dtype, produce)
        if len(shards) > 1:  # the index save_pretrained writes (its key order and indent)
            index = {"metadata": {"total_parameters": sum(math.prod(shape) for _, shape in entries), "total_size": written[0]},
                     "weight_map": {name: file for file, shard in zip(files, shards) for name, _ in shard}}
            (tmp / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        given = source_dir / "generation_config.json" if source_dir is not None else None
        if given is not None and _read_json(given) is not None:  # the source's, byte for byte
            (tmp / "generation_config.json").write_bytes(read_bytes(given, limit=_text.MAX_SIDE_FILE))
            copied.append("generation_config.json")
        else:  # one naming the tokenizer's special ids, as transformers derives it from config.json
            (tmp / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **ids}, indent=2) + "\n",
                                                        encoding="utf-8")
        for name in TOKENIZER_FILES if source_dir is not None else ():
            raw = _side_bytes(source_dir / name)
            if raw is not None:
                (tmp / name).write_bytes(raw)
                copied.append(name)

    write_dir_atomic(Path(out_dir), fill, force=force, label=f"-o {out_dir}", protect=protect)
    return ExportHfResult(Path(out_dir), family.model_type, len(entries), written[0], dtype, copied, len(shards))
