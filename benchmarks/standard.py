"""The standard set of issue 6: five families at about 1.1 B parameters (d_model 2048, 16-22 layers),
made from the library specs with --set overrides (no copies of the spec files).

LLaMA follows TinyLlama-1.1B (22 layers, 32 query / 4 KV heads, d_ff 5632). The others keep their
family's axes and take d_model 2048; layer counts and widths are chosen to land near 1.1 B (the
256k/250k vocabularies of PaLM and BLOOM put half a billion parameters in the tied embedding alone).
max_seq_len 4096 everywhere so that prompt 2048 + 128 new tokens fits.

TINY shrinks each family further (2 layers, d_model 64, vocabulary 97) for CPU runs of the
harness's orchestration (`run_standard.py --tiny --device cpu`, tests/bench/test_run_standard.py); every
family keeps its axes (GQA, MQA with head_dim, ALiBi, learned and 2D positions, prefix mask).
"""

from __future__ import annotations

COMMON = ["d_model=2048", "max_seq_len=4096"]

FAMILIES: dict[str, tuple[str, list[str]]] = {
    "llama": ("specs/llama.yaml", COMMON + ["name=llama-1.1b", "n_layers=22", "attention.n_heads=32", "attention.kv_heads=4",
                                            "attention.sharing=gqa", "mlp.d_ff=5632"]),
    "palm": ("specs/palm.yaml", COMMON + ["name=palm-1.2b", "n_layers=16", "attention.n_heads=16", "attention.head_dim=128", "mlp.d_ff=5632"]),
    "bloom": ("specs/bloom.yaml", COMMON + ["name=bloom-1.3b", "n_layers=16", "attention.n_heads=16", "mlp.d_ff=8192"]),
    "gpt2": ("specs/gpt2.yaml", COMMON + ["name=gpt2-1.1b", "n_layers=20", "attention.n_heads=16", "mlp.d_ff=8192",
                                          "position.max_positions=4096"]),
    "glm": ("specs/glm.yaml", COMMON + ["name=glm-1.1b", "n_layers=20", "attention.n_heads=16", "mlp.d_ff=8192",
                                        "position.max_positions=4096"]),
}


_TINY_COMMON = ["n_layers=2", "d_model=64", "attention.n_heads=4", "mlp.d_ff=128", "vocab_size=97", "max_seq_len=64"]
TINY: dict[str, list[str]] = {
    "llama": _TINY_COMMON + ["name=llama-tiny", "attention.kv_heads=2"],
    "palm": _TINY_COMMON + ["name=palm-tiny", "attention.head_dim=16"],
    "bloom": _TINY_COMMON + ["name=bloom-tiny", "mlp.d_ff=256"],  # transformers' Bloom fixes d_ff = 4 d_model
    "gpt2": _TINY_COMMON + ["name=gpt2-tiny", "position.max_positions=64"],
    "glm": _TINY_COMMON + ["name=glm-tiny", "position.max_positions=64"],
}


def load_family(name: str, root=None, tiny: bool = False, extra: list[str] | tuple = ()):
    """The family's spec; `extra`: more --set overrides after the family's own (smaller dry runs)."""
    from pathlib import Path

    from archc.loader import load_spec

    import sys

    from archc.errors import UserError

    path, sets = FAMILIES[name]
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    try:
        return load_spec(root / path, sets + (TINY[name] if tiny else []) + list(extra))
    except UserError as e:  # a script's --set the spec refuses: archc's one line (it names the --set), exit 2, no traceback
        print(f"{Path(sys.argv[0]).name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

