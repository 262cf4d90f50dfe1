"""`archc demo`: the main job end to end on a built-in default.

1. validate and summarise every spec in the library (specs/);
2. compile one spec (default: LLaMA at a demo size, so it runs in seconds on a CPU) to ONNX;
3. generate with onnxruntime and with the PyTorch module from the same graph, and show both agree.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import SetOption, load
from archc.dtypes import DType
from archc.words import human

# LLaMA's axes at a size a laptop CPU compiles and runs in seconds; any --set overrides these.
DEMO_SETS = ["n_layers=4", "d_model=256", "attention.n_heads=8", "mlp.d_ff=688", "vocab_size=512", "max_seq_len=128",
             "dtype=float32"]
DEMO_PROMPT = [1, 17, 42, 99, 7, 300]


def demo_prompt(vocab_size: int) -> list[int]:
    """DEMO_PROMPT's ids taken modulo the vocabulary, so `--set vocab_size=10` still has a valid prompt."""
    return [t % vocab_size for t in DEMO_PROMPT]


@app.command("demo")
def demo_cmd(
    spec: Annotated[str, typer.Argument(help="Spec to compile and run (file or library name).")] = "llama",
    sets: SetOption = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Keep the compiled model here (default: a temporary directory).")] = None,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 12,
) -> None:
    """Validate and summarise the spec library, then compile a spec to ONNX and run it."""
    from rich.console import Console
    from rich.table import Table

    import archc
    from archc.cost import cost
    from archc.loader import library_specs, load_spec

    # markup=False: spec names are user text, printed as written
    con = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 120)
    table = Table(title="spec library (specs/)", title_justify="left")
    for col in ("spec", "parameters", "layers", "d_model", "attention", "position", "residual", "KV B/token fp16"):
        table.add_column(col, justify="right" if col in ("parameters", "layers", "d_model", "KV B/token fp16") else "left")
    for path in library_specs():
        s = load_spec(path)
        c = cost(archc.compile(s))
        a = s.attention
        table.add_row(path.stem, human(c.params), str(s.n_layers), str(s.d_model), f"{a.sharing.value} {a.n_heads}/{a.kv_heads}",
                      s.position.kind.value, s.residual.layout.value, f"{c.kv_bytes_per_token(DType.float16):,}")
    con.print(table)
    con.print(f"all {len(library_specs())} library specs valid\n")

    s = load(spec, DEMO_SETS + list(sets or []))
    graph = archc.compile(s)
    tmp = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="archc-demo-"))
        out = tmp / "model"
    try:
        _compile_and_run(con, graph, out, device, max_new_tokens)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _compile_and_run(con, graph, out: Path, device: str, max_new_tokens: int) -> None:
    import time

    from archc.runner import Session
    from exporters.onnx_export import export

    s = graph.spec
    prompt = demo_prompt(s.vocab_size)
    if len(prompt) + max_new_tokens > s.max_seq_len:  # checked here: the runner's message names --prompt-ids
        from archc.errors import UserError

        raise UserError(f"demo: its {len(prompt)}-token prompt + --max-new-tokens {max_new_tokens} exceeds max_seq_len "
                        f"{s.max_seq_len}; lower --max-new-tokens or --set max_seq_len={len(prompt) + max_new_tokens}")
    t0 = time.perf_counter()
    export(graph, out, target="portable", dtype="fp32")
    con.print(f"compiled {s.name} ({s.n_layers} layers, d_model {s.d_model}) -> {out} in {time.perf_counter() - t0:.2f} s")
    sess = Session(out, device=device)
    if sess.note:
        con.print(sess.note)
    res = sess.generate([prompt], max_new_tokens)
    ort_ids = res.ids[0]
    torch_ids = _torch_greedy(graph, prompt, max_new_tokens)
    con.print(f"prompt ids        {prompt}")
    con.print(f"onnxruntime ({res.device}) {ort_ids}")
    con.print(f"pytorch           {torch_ids}")
    con.print(f"timing: prefill {res.prefill_ms:.1f} ms, decode {res.decode_tokens_per_s:.1f} tokens/s")
    if ort_ids != torch_ids:
        from archc.errors import UserError

        raise UserError("onnxruntime and PyTorch generated different tokens; please report this spec")
    from rich.text import Text

    con.print(Text("onnxruntime and PyTorch agree token for token", style="green"))


def _torch_greedy(graph, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with the PyTorch module and its KV cache, fed as the runner feeds onnxruntime."""
    from exporters.torch_module import build_module, greedy_generate

    return greedy_generate(build_module(graph), graph, [prompt], n)[0]
