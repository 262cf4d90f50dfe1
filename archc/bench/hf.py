"""The Hugging Face model that computes what an archc graph computes, for `archc bench`'s `hf` backends.

`hf_equivalent(graph)` answers with (model type, transformers config, class, converter) when one of the
14 transformers model types that export-hf writes holds the graph's spec exactly, else with the one-line
reason it does not. Both come from archc.hf.export, so the benchmark's HF model is exactly what
`archc export-hf` would write: the same config and the same checkpoint re-layouts (GPT-2's transposed
Conv1D, fused per-head query_key_value, ...), proven against transformers in tests/hf/test_hf_export.py.
A spec the type cannot hold is refused: a silently different model would make the comparison meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from archc.errors import UserError
from archc.graph import ComponentGraph


@dataclass
class HfEquivalent:
    model_type: str
    config: object  # a transformers PreTrainedConfig
    model_class: type
    convert: Callable[[dict], dict]  # archc state dict -> HF state dict


def hf_equivalent(graph: ComponentGraph) -> HfEquivalent | str:
    """The HF class that computes this graph exactly, or one line saying why no supported type does."""
    import transformers

    from archc.hf.export import hf_config, hf_state, tensor_rules

    try:
        family, data = hf_config(graph.spec, dtype="float32")
    except UserError as e:
        return str(e)
    config = transformers.AutoConfig.for_model(data["model_type"], **{k: v for k, v in data.items() if k != "model_type"})
    embed_name = next(name for name, rule in tensor_rules(family, data, graph.spec).items() if rule.targets == ("embed.weight",))

    def convert(sd: dict) -> dict:
        out = hf_state(graph, family, data, sd.__getitem__)
        if data["tie_word_embeddings"]:
            out[family.tied_head] = out[embed_name]  # the state dict names the tied head too
        return out

    return HfEquivalent(family.model_type, config, getattr(transformers, family.architecture), convert)


def build_hf_model(graph: ComponentGraph, state: dict, *, dtype, device, attn_implementation: str = "eager"):
    """The HF model with archc's weights `state` (archc names), in `dtype` on `device`.

    Raises ValueError naming the first HF parameter the mapping leaves unset: every parameter
    must come from archc, so a mapping gap can never leave HF's own random init in place."""
    import torch

    eq = hf_equivalent(graph)
    if isinstance(eq, str):
        raise ValueError(eq)
    eq.config._attn_implementation = attn_implementation
    with torch.device(device):
        model = eq.model_class(eq.config).to(dtype)
    mapped = {k: v.to(device=device, dtype=dtype) for k, v in eq.convert(state).items()}
    wanted = set(model.state_dict())
    missing, unexpected = sorted(wanted - set(mapped)), sorted(set(mapped) - wanted)
    if missing or unexpected:
        raise ValueError(f"HF {eq.model_type} mapping incomplete: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict(mapped, strict=True)
    if eq.config.tie_word_embeddings:
        model.tie_weights()
    gc = model.generation_config
    gc.eos_token_id = None  # random weights: never stop early, every run makes exactly N tokens
    gc.pad_token_id = 0
    gc.bos_token_id = None
    return model.eval(), eq
