"""`archc compile` (spec -> ONNX model directory) and `archc run` (generate with onnxruntime).

Heavy imports (onnx, onnxruntime, torch) happen inside the command functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import Replaces, SetOption, force_option, load
from archc.commands.quant_options import (QuantAccuracyLevelOption, QuantBlockSizeOption, QuantHeadOption, QuantMethodOption,
                                          QuantOption, QuantSchemeOption, quant_settings)
from archc.errors import UserError, one_line
from archc.model_dir import MODEL_FILE, SPEC_FILE


def _console(stderr: bool = False):
    from rich.console import Console

    # markup=False: spec names and paths are user text ('[/]' is not a rich tag here)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)


def _is_hf_dir(arg: str) -> bool:
    p = Path(arg)
    return p.is_dir() and (p / "config.json").exists() and not (p / SPEC_FILE).exists()


def _tokenizer_source(spec: str, weights: str | None) -> Path | None:
    """Where compile copies tokenizer files from: the first directory among the spec argument (a Hugging
    Face directory, a training run folder, a compiled model) and --weights that holds a tokenizer.json;
    else a Hugging Face directory without one (compile then says the model takes ids only); else None."""
    dirs = [Path(a) for a in (spec, weights) if a is not None and Path(a).is_dir()]
    for d in dirs:
        if (d / "tokenizer.json").is_file():
            return d
    return next((d for d in dirs if _is_hf_dir(str(d))), None)


def lowering_summary(lowering: dict[str, str]) -> list[str]:
    """One line per distinct lowering: 'cuda:GroupQueryAttention  x2  layers.0.attn, layers.1.attn'."""
    import re

    groups: dict[str, list[str]] = {}
    for node, how in lowering.items():
        groups.setdefault(re.sub(r" \(fused into [^)]*\)", " (residual add, fused)", how), []).append(node)
    lines = []
    for how, nodes in sorted(groups.items(), key=lambda kv: (kv[0] == "portable", kv[0])):
        shown = ", ".join(nodes[:4]) + (f", ... ({len(nodes) - 4} more)" if len(nodes) > 4 else "")
        lines.append(f"  {how:<60} x{len(nodes):<3} {shown}")
    return lines


@app.command("compile")
def compile_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file, library name (llama), or a Hugging Face model directory.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory (model.onnx, model.onnx.data, spec.yaml, genai_config.json).")],
    sets: SetOption = None,
    target: Annotated[str, typer.Option(help="portable (standard ONNX ops) | cuda (onnxruntime com.microsoft fused ops).")] = "portable",
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16 (logits are float32 always).")] = "fp32",
    weights: Annotated[Optional[str], typer.Option(help="Hugging Face model directory, or a safetensors file of archc parameter names. Default: the spec's seeded init.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Init seed (overrides init.seed).")] = None,
    logits: Annotated[str, typer.Option(help="all (logits [batch, seq, vocab], the I/O contract) | last ([batch, 1, vocab]: "
                                             "the head runs on the last position only, for generation).")] = "all",
    next_token: Annotated[str, typer.Option(help="argmax (an extra output next_token [batch, 1]: the greedy pick on the device, "
                                                 "which `archc run` reads instead of the logits) | none (the contract's outputs only).")] = "argmax",
    quant: QuantOption = "none",
    quant_block_size: QuantBlockSizeOption = 32,
    quant_scheme: QuantSchemeOption = "symmetric",
    quant_accuracy_level: QuantAccuracyLevelOption = 0,
    quant_head: QuantHeadOption = False,
    quant_method: QuantMethodOption = "rtn",
    kernels: Annotated[str, typer.Option(help="onnxruntime (its own operators only) | archc (--target cuda: an fp16 SwiGLU MLP's "
                                              "gate|up GEMMs, SiLU and Mul as one archc.GatedMLP custom op, a hand-written CUDA "
                                              "kernel for decode; q|k|v, o and down as archc.Linear, with the RMSNorms and residual Adds of LLaMA-style layers folded into them; "
                                              "with --quant int4, GatedMLPNBits and LinearNBits on the same int4 codes; needs nvcc to build the op library, which goes into -o and "
                                              "which `archc run` registers; opt-in).")] = "onnxruntime",
    force: force_option(Replaces.MODEL_DIR) = False,
) -> None:
    """Compile a spec into an ONNX model directory that `archc run` and onnxruntime-genai load."""
    import archc
    from archc.dtypes import SHORT_WORDS, DType
    from exporters.onnx_export import Kernels, Logits, NextToken, Target, check_kernels, export

    if target not in {t.value for t in Target}:
        raise UserError(f"--target {target}: choose one of {', '.join(t.value for t in Target)}")
    use_ort_ops = check_kernels(kernels, target) is Kernels.archc
    if logits not in {v.value for v in Logits}:
        raise UserError(f"--logits {logits}: choose one of {', '.join(v.value for v in Logits)}")
    if next_token not in {v.value for v in NextToken}:
        raise UserError(f"--next-token {next_token}: choose one of {', '.join(v.value for v in NextToken)}")
    if dtype not in SHORT_WORDS:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(SHORT_WORDS)}")
    qs = quant_settings(quant, quant_block_size, quant_scheme, quant_accuracy_level, quant_head, quant_method, dtype)
    if out.is_dir() and (out / MODEL_FILE).exists() and not force:
        raise UserError(f"-o {out}: a compiled model is already there; pass --force to replace it, or choose another directory")
    ort_ops_lib = None
    if use_ort_ops:  # before the graph: no nvcc / no headers is one line, at once
        from exporters.ort_ops.build import Kind, library

        ort_ops_lib = library(Kind.cuda)
    sets = list(sets or [])
    if seed is not None:
        sets.append(f"init.seed={seed}")
    if _is_hf_dir(spec):
        from archc.hf import config_to_spec, read_config
        from archc.loader import spec_from_dict

        source = str(Path(spec) / "config.json")
        data = config_to_spec(read_config(spec), name=Path(spec).resolve().name, source=source)
        if sets:
            raise UserError("--set/--seed do not apply to a Hugging Face directory (its config.json decides the spec)")
        s = spec_from_dict(data, source=source)
        weights = weights or spec
    else:
        s = load(spec, sets)
    from archc.cost import light_graph
    from archc.files import guard_model_dir
    from archc.room import check_export_room

    # Before the full graph is built (a million layers take minutes and gigabytes): an -o that must not
    # be replaced, and a model that cannot fit in memory or on disk, are refused from a light graph.
    guard_model_dir(out, f"-o {out}")
    check_export_room(light_graph(s), out, 4 if dtype == "fp32" else 2, label=f"-o {out}",
                      whole_in_memory=weights is not None and Path(weights).is_dir())
    if _is_hf_dir(spec):
        from archc.hf import check_layer_count

        check_layer_count(spec, s.n_layers)
    graph = archc.compile(s)
    import tempfile

    tokenizer_dir = _tokenizer_source(spec, weights)
    with tempfile.TemporaryDirectory(prefix="archc-compile-") as scratch:
        if weights is None:  # a training run folder: its latest checkpoint (a distributed one is consolidated here)
            from archc.parallel.checkpoint import run_weights_file

            found = run_weights_file(Path(spec), graph, Path(scratch))
            weights = str(found) if found is not None else None
        result = export(graph, out, target=target, dtype=DType.from_short(dtype), weights=weights, logits=logits, next_token=next_token,
                        tokenizer_dir=tokenizer_dir, quant=qs, kernels=kernels, ort_ops_lib=ort_ops_lib)
    con = _console()
    mb = result.data_bytes / 2**20
    shape = "[batch, seq, vocab]" if result.logits is Logits.all else "[batch, 1, vocab]: last position only"
    con.print(f"compiled {s.name} -> {out} (target {target}, {dtype}, logits {result.logits.value} {shape}, "
              f"{result.n_weights} weight tensors, {mb:.1f} MiB)")
    if qs.active:
        con.print(f"quantized: {qs.describe(result.lowering)}")
    if use_ort_ops:
        from archc.model_dir import ORT_OPS_FILE

        held = archc_ops_held(result.lowering)
        con.print(f"archc ops: {held}; {ORT_OPS_FILE} copied into {out} (`archc run` registers it with onnxruntime)"
                  if (out / ORT_OPS_FILE).exists() else "archc ops: none fits this model (see the lowering below); "
                  "it uses onnxruntime's operators only")
    con.print("lowering:")
    for line in lowering_summary(result.lowering):
        con.print(line)
    if tokenizer_dir is not None:
        if "tokenizer.json" in result.tokenizer_files:
            con.print(f"tokenizer: {', '.join(result.tokenizer_files)} (`archc run {str(out)} --prompt TEXT`)")
        else:
            con.print(f"tokenizer: {tokenizer_dir} has no tokenizer.json, so the model takes token ids only (--prompt-ids); "
                      f"copy the checkpoint's tokenizer.json into {out} for text")
    if result.genai_unsupported is not None:
        con.print(f"onnxruntime-genai: cannot drive this model ({result.genai_unsupported}); "
                  f"genai_config.json's model type says so and genai refuses it; `archc run` runs it")


def _parse_ids(values: list[str]) -> list[list[int]]:
    """Each --prompt-ids value as its ids. Spaces around an id are allowed, inside one refused ("1 2" was
    read as 12). An empty item ("1,,2", "1,2,") is refused, not skipped: it stands for an id the user
    meant (it was read as 1,2 without a word); so is anything but optionally signed ASCII digits (int()
    also takes "1_0" as 10). A value with no ids at all is left empty for check_prompts' message."""
    prompts = []
    for v in values:
        items = [t.strip() for t in v.split(",")]
        if items == [""]:
            prompts.append([])
            continue
        if "" in items:
            raise UserError(one_line(f"--prompt-ids {v[:80]!r}: item {items.index('') + 1} is empty; give comma-separated "
                                     "integer token ids with no empty item, e.g. 1,2,3"))
        if not all(re.fullmatch(r"-?[0-9]{1,30}", t) for t in items):  # 30 digits: far past any vocabulary, under int()'s cap
            raise UserError(one_line(f"--prompt-ids {v[:80]!r}: give comma-separated integer token ids, e.g. 1,2,3"))
        prompts.append([int(t) for t in items])
    return prompts


@app.command("run")
def run_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Directory made by `archc compile`.")],
    prompt_ids: Annotated[Optional[list[str]], typer.Option("--prompt-ids", help="Comma-separated token ids; repeat for a batch.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 16,
    top_k: Annotated[Optional[int], typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sample at this softmax temperature (1.0 samples from the "
                                                             "model's distribution as it is). Default: greedy, unless --top-k/--top-p.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="Text (the model directory's tokenizer.json encodes it); "
                                                        "the completion streams to stdout. Repeat for a batch.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="JSONL file, one {\"prompt\": text} per line "
                                                         "(with --chat also {\"messages\": [...]}); writes one JSON object per line.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Apply the chat template of tokenizer_config.json to each prompt "
                                                      "(a user message, with the generation prompt).")] = False,
) -> None:
    """Generate with onnxruntime from token ids (--prompt-ids) or text (--prompt, --prompts; stops at the
    model's eos ids). Greedy unless --top-k/--top-p/--temperature ask for sampling."""
    from archc.runner import Session

    # An explicit --temperature samples, 1.0 included; without any sampling option the pick is greedy.
    sampling = {"temperature": 1.0 if temperature is None else temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                "greedy": None if temperature is None else False}
    from archc.runner.sampling import check_sampling

    check_sampling(sampling["temperature"], top_k, top_p, seed)  # before the model opens (its notes, its seconds)
    given = [name for name, v in (("--prompt-ids", prompt_ids), ("--prompt", prompt), ("--prompts", prompts_file)) if v]
    if len(given) != 1:
        raise UserError("archc run: give exactly one of --prompt TEXT, --prompts FILE.jsonl or --prompt-ids IDS"
                        + (f" (got {' and '.join(given)})" if given else ""))
    if chat and prompt_ids:
        raise UserError("--chat applies to text prompts (--prompt, --prompts), not --prompt-ids")
    if prompt_ids:
        prompts = _parse_ids(prompt_ids)
    elif not (Path(model_dir) / "tokenizer.json").exists() and Path(model_dir).is_dir():
        from archc.text import Text

        Text.load(model_dir)  # the one-line "no tokenizer.json: add ..." error, before loading the model
    sess = Session(model_dir, device=device)
    con, err = _console(), _console(stderr=True)
    if sess.note:
        err.print(sess.note)
    if not prompt_ids:
        from archc.commands.text_run import run_text

        results = run_text(sess, model_dir, list(prompt or []), prompts_file, chat, max_new_tokens, **sampling)
        for res in results:
            err.print(f"device {res.device}: prefill {res.prefill_ms:.1f} ms, decode {res.decode_tokens_per_s:.1f} tokens/s "
                      f"(batch {len(res.ids)}, {len(res.ids[0])} new tokens)")
        return
    res = sess.generate(prompts, max_new_tokens, **sampling)
    for ids in res.ids:
        con.print(",".join(map(str, ids)))
    err.print(f"device {res.device}: prefill {res.prefill_ms:.1f} ms, decode {res.decode_tokens_per_s:.1f} tokens/s "
              f"(batch {len(prompts)}, {max_new_tokens} new tokens)")


def archc_ops_held(lowering: dict[str, str]) -> str:
    """compile's `archc ops:` words: which of archc's custom ops the export holds, from its lowering record
    (`archc:GatedMLP (...)`, `...; archc:Linear (q|k|v, ...) + archc:Linear (o, ...)`, `archc:LinearNBits int4 sym b32
    (down, ...)`), each op with the number of graph nodes (components) naming it, e.g. `GatedMLPNBits in 22 MLPs,
    LinearNBits in 44 components`. A node may name several ops (an MLP: GatedMLP and the Linear of its down)."""
    counts: dict[str, int] = {}
    for how in lowering.values():
        for op in sorted(set(re.findall(r"(?<![A-Za-z])archc:([A-Za-z0-9]+)", how))):
            counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op} in {n} {_ARCHC_OP_NOUN[op]}{'s' if n != 1 else ''}" for op, n in sorted(counts.items())) \
        or "none named in the lowering"


# What each archc op computes a part of, for archc_ops_held (an op missing here is a KeyError: name its noun first)
_ARCHC_OP_NOUN = {"GatedMLP": "MLP", "GatedMLPNBits": "MLP", "Linear": "component", "LinearNBits": "component"}
