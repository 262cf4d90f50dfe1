"""Hugging Face interop: a transformers config.json becomes a spec, a checkpoint becomes graph weights.

    from archc.hf import import_hf
    spec, state = import_hf("path/to/hf-model")          # spec: archc.Spec, state: {graph name: tensor}
    module = build_module(archc.compile(spec), weights=state)

`config_to_spec(config)` -> spec data (a dict that validates as a Spec); `load_weights(graph, dir)`
-> {graph parameter name: float32 tensor}. Each supported model_type is one `Family`
(archc/hf/<family>.py) holding its transformers config defaults, its config -> spec function and its
checkpoint-name table; anything the spec language cannot express is a UserError naming the field.
Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from archc.errors import SpecError, UserError, one_line
from archc.hf import bloom, falcon, gpt2, llama, neox, opt
from archc.hf.checkpoint import read_config, read_tensors
from archc.hf.common import Cfg, Family

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    llama.LLAMA, llama.MISTRAL, llama.QWEN2, llama.GEMMA, gpt2.GPT2, gpt2.GPT_BIGCODE, neox.GPT_NEOX, neox.GPTJ,
    falcon.FALCON, bloom.BLOOM, bloom.MPT, opt.OPT, neox.PHI, neox.STABLELM,
)}
SUPPORTED_TYPES = tuple(FAMILIES)

__all__ = ["FAMILIES", "SUPPORTED_TYPES", "config_to_spec", "import_hf", "load_weights", "read_config"]


def family_of(config: dict, source: str = "config.json") -> Family:
    model_type = config.get("model_type")
    if not model_type:
        raise UserError(f"{source}: no model_type; supported model types: {', '.join(SUPPORTED_TYPES)}")
    if not isinstance(model_type, str):
        raise UserError(one_line(f"{source}: model_type must be a string such as \"llama\", got {json.dumps(model_type)[:60]}; "
                                 f"supported model types: {', '.join(SUPPORTED_TYPES)}"))
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"{source}: model_type '{model_type}' is not supported; supported model types: "
                        f"{', '.join(SUPPORTED_TYPES)}")
    return family


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def check_layer_count(model_dir: str | Path, n_layers: int) -> None:
    """Refuse a checkpoint whose layer count differs from its config's, from the tensor names alone,
    before a graph of config.json's n_layers is built (a config claiming a million layers beside a
    two-layer checkpoint is then one line, at once)."""
    from archc.hf.checkpoint import has_checkpoint

    if not has_checkpoint(model_dir):
        return
    indices = {int(m.group(1)) for name in read_tensors(model_dir, meta=True) for m in [_LAYER_INDEX.search(name)] if m}
    if indices and max(indices) + 1 != n_layers:
        raise UserError(f"{model_dir}: config.json says {n_layers} layers, the checkpoint has {max(indices) + 1}; "
                        "the checkpoint does not match its config.json")


def config_to_spec(config: dict, name: str | None = None, source: str = "config.json") -> dict:
    """Spec data (name first, then the architecture) equivalent to a transformers config.json."""
    from archc.loader import spec_from_dict

    family = family_of(config, source)
    try:
        body = family.to_spec(Cfg(config, family.defaults, source))
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a field of the wrong type, e.g. "eps": "small"
        raise UserError(f"{source}: model_type {family.model_type}: malformed field value ({type(e).__name__}: {e})") from None
    if not name:
        name = Path(str(config.get("_name_or_path") or "")).name or f"{family.model_type}-import"
    arch = config.get("architectures") or []
    data = {"name": name, "description": f"imported from a Hugging Face {family.model_type} config",
            "reference": f"transformers model_type {family.model_type}" + (f", {arch[0]}" if arch else "")}
    from archc.spec import Spec

    data.update(sorted(body.items(), key=lambda kv: list(Spec.model_fields).index(kv[0])))  # the spec's field order
    try:
        spec_from_dict(data, source=source)
    except SpecError as e:
        raise UserError(f"{source}: model_type {family.model_type}: the imported spec does not validate: "
                        f"{f'{e.field}: ' if e.field else ''}{e.message}") from None  # the spec field: n_layers for num_hidden_layers
    return data


def _canonical(name: str, rules: dict, family: Family, tied: bool) -> str | None:
    """The table name a checkpoint name stands for (through legacy prefixes), or None when unknown."""
    known = lambda n: n in rules or (tied and n == family.tied_head)  # noqa: E731
    if known(name):
        return name
    for old, new in family.aliases:
        if name.startswith(old) and known(new + name[len(old):]):
            return new + name[len(old):]
    return None


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def load_weights(graph, model_dir: str | Path, dtype=None, *, meta: bool = False, progress: bool | None = False) -> dict:
    """{graph parameter name: tensor} from the checkpoint in `model_dir`, re-laid out for the graph.

    The graph must come from this directory's config (config_to_spec); shapes are checked against it.
    Unknown or missing checkpoint tensors are UserErrors naming them. Tensors are cast to `dtype`
    (default float32). A tied head's checkpoint copy is dropped: transformers re-ties it on load too.
    meta=True checks names and shapes only (tensors on the meta device, safetensors headers only).
    progress: a progress bar on stderr (None: when stderr is a terminal; `archc import-hf` passes None).
    """
    import torch

    dtype = dtype or torch.float32
    config = read_config(model_dir)
    source = str(Path(model_dir) / "config.json")
    family = family_of(config, source)
    cfg = Cfg(config, family.defaults, source)
    spec = graph.spec
    rules = family.tensors(cfg, spec)
    tied = spec.embedding.output.value == "tied"
    ignore = [re.compile(p) for p in family.ignore]
    tensors = read_tensors(model_dir, meta=meta)

    found: dict[str, str] = {}  # table name -> checkpoint name
    unknown = []
    for name in tensors:
        canon = _canonical(name, rules, family, tied)
        if canon is None:
            if not any(p.search(name) for p in ignore):
                unknown.append(name)
            continue
        if canon in found:
            raise UserError(f"{model_dir}: checkpoint has both {found[canon]} and {name} for the same tensor")
        found[canon] = name
    if unknown:
        raise UserError(f"{model_dir}: checkpoint tensors with no place in the {family.model_type} spec: "
                        f"{_listing(sorted(unknown))}; the checkpoint does not match its config.json")
    missing = sorted(set(rules) - set(found))
    if missing:
        raise UserError(f"{model_dir}: checkpoint lacks tensors the {family.model_type} config implies: {_listing(missing)}")

    from archc.progress import TensorProgress

    expected = {full: shape for full, shape, _ in graph.params()}
    state: dict = {}
    nbytes = {canon: tensors[found[canon]].numel() * tensors[found[canon]].element_size() for canon in rules}
    bar = TensorProgress("checking checkpoint" if meta else "reading checkpoint", len(rules), sum(nbytes.values()),
                         enabled=progress)
    with bar:
        for canon, rule in rules.items():
            _place(canon, rule, tensors[found[canon]], found, expected, state, dtype, model_dir)
            bar.advance(nbytes[canon])
    left = sorted(set(expected) - set(state))
    if left:
        raise UserError(f"{model_dir}: no checkpoint tensor gives {_listing(left)}")
    return state


def _place(canon, rule, src, found, expected, state, dtype, model_dir) -> None:
    """One checkpoint tensor re-laid out into the graph tensors it gives, shapes checked."""
    try:
        parts = rule.apply(src)
    except (RuntimeError, ValueError, UserError) as e:
        raise UserError(f"{model_dir}: {found[canon]} {list(src.shape)} does not fit the config's layout: {e}") from None
    for target, t in zip(rule.targets, parts, strict=True):
        if target not in expected:
            raise UserError(f"{found[canon]} maps to {target}, which the graph of this spec does not have")
        if tuple(t.shape) != tuple(expected[target]):
            raise UserError(f"{model_dir}: {found[canon]} gives {target} shape {list(t.shape)}, the spec needs "
                            f"{list(expected[target])}; the checkpoint does not match its config.json")
        state[target] = t.to(dtype).contiguous()


def import_hf(model_dir: str | Path, name: str | None = None):
    """(Spec, {graph parameter name: float32 tensor}) for a Hugging Face model directory."""
    import archc
    from archc.loader import spec_from_dict

    source = str(Path(model_dir) / "config.json")
    data = config_to_spec(read_config(model_dir), name=name or Path(model_dir).resolve().name, source=source)
    spec = spec_from_dict(data, source=source)
    return spec, load_weights(archc.compile(spec), model_dir)
