"""`archc import-hf DIR -o spec.yaml`: a Hugging Face model directory's config.json as an archc spec;
`archc export-hf SPEC_OR_DIR -o DIR`, the inverse (archc.hf.export).

The spec is written through a temporary file in the output folder, validated by the ordinary spec
loader, and only then moved into place; any error leaves no file. When the directory also holds a
checkpoint, its tensor names and shapes are checked against the spec first (headers only, no
weights are read), so a checkpoint that does not match its config is reported at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.atomic import write_text_atomic
from archc.cli import app
from archc.commands.common import ForceOption, Replaces, SetOption, force_option
from archc.errors import UserError
from archc.files import FORCE_HINT, check_output_file
from archc.model_dir import MODEL_FILE, SPEC_FILE


def spec_yaml(data: dict, source: str) -> str:
    import yaml

    header = (f"# Imported by `archc import-hf` from {source}.\n"
              "# Edit freely; weights load by name with archc.hf.load_weights(graph, model_dir).\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


@app.command("import-hf")
def import_hf_cmd(
    model_dir: Annotated[str, typer.Argument(help="Hugging Face model directory (config.json, optional weights).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Spec file to write.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Spec name; default: the directory's name.")] = None,
    check_weights: Annotated[bool, typer.Option(help="Check the checkpoint's names and shapes when one is present.")] = True,
    force: ForceOption = False,
) -> None:
    """Write the archc spec equivalent to a Hugging Face config.json (llama, mistral, qwen2, gemma, gpt2,
    gpt_bigcode, gpt_neox, gptj, falcon, bloom, mpt, opt, phi, stablelm)."""
    from archc.hf import config_to_spec, read_config
    from archc.hf.checkpoint import has_checkpoint

    source = str(Path(model_dir) / "config.json")
    config = read_config(model_dir)
    check_output_file(output, f"-o {output}", force=force)  # after reading (an input named as -o says so), before the work
    data = config_to_spec(config, name=name or Path(model_dir).resolve().name, source=source)
    checked = ""
    if check_weights and has_checkpoint(model_dir):
        import archc
        from archc.hf import check_layer_count, load_weights
        from archc.loader import spec_from_dict

        check_layer_count(model_dir, data["n_layers"])  # before a graph of n_layers is built
        state = load_weights(archc.compile(spec_from_dict(data, source=source)), model_dir, meta=True, progress=None)
        checked = f"; checkpoint matches ({len(state)} graph tensors)"
    from archc.loader import load_spec

    # the written file must load as the spec it describes
    write_text_atomic(output, spec_yaml(data, source), check=load_spec, label=f"-o {output}", overwrite=force,
                      exists_hint=FORCE_HINT)
    typer.echo(f"wrote {output} ({data['name']}, model_type {config['model_type']}){checked}")


def _types_help() -> str:
    from archc.hf import SUPPORTED_TYPES  # archc.hf imports neither torch nor transformers

    return ", ".join(SUPPORTED_TYPES)


_TYPES_HELP = _types_help()


def _train_checkpoint(d: Path) -> Path | None:
    """The newest weights of an `archc train` output: checkpoints/latest names the folder, else the
    highest checkpoints/step-*; a model.safetensors beside spec.yaml also counts."""
    root = d / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{pointer}: cannot read ({e}); pass --weights FILE") from None
        if name and (root / name / "model.safetensors").is_file():
            return root / name / "model.safetensors"
        raise UserError(f"{pointer}: names checkpoint {name!r}, which has no model.safetensors; pass --weights FILE")
    steps = sorted(root.glob("step-*/model.safetensors")) if root.is_dir() else []
    if steps:
        return steps[-1]
    single = d / "model.safetensors"
    return single if single.is_file() else None


def _export_source(arg: str, sets: list[str], weights: Optional[Path], seed: Optional[int]):
    """(graph, weight getter, source directory or None, the paths that are inputs, what the weights are)."""
    import archc
    from archc.commands.common import load
    from archc.hf.export import safetensors_source, seeded_source
    from exporters.onnx_weights import onnx_source

    p = Path(arg)
    if p.is_dir():
        if not (p / SPEC_FILE).is_file():
            if (p / "config.json").exists():
                raise UserError(f"{arg}: a Hugging Face model directory already (config.json, no spec.yaml); "
                                "export-hf takes a spec, an `archc compile` directory or an `archc train` directory")
            raise UserError(f"{arg}: directory has no spec.yaml; give a spec, an `archc compile` directory or an "
                            "`archc train` directory")
        if sets or seed is not None:
            raise UserError(f"--set/--seed do not apply to a directory ({arg}): its spec.yaml and weights decide the model")
        from archc.loader import load_spec

        graph = archc.compile(load_spec(p / SPEC_FILE))
        if weights is not None:
            return graph, safetensors_source(graph, weights), p, (p, weights), str(weights)
        if (p / MODEL_FILE).is_file():
            return graph, onnx_source(graph, p), p, (p,), f"{p / 'model.onnx'}'s initializers"
        ckpt = _train_checkpoint(p)
        if ckpt is None:
            raise UserError(f"{arg}: has a spec.yaml but no weights (model.onnx, checkpoints/, model.safetensors); "
                            "pass --weights FILE, or give the spec file to export its seeded init")
        return graph, safetensors_source(graph, ckpt, label="checkpoint"), p, (p,), str(ckpt)
    extra = list(sets)
    if seed is not None:
        extra.append(f"init.seed={seed}")
    graph = archc.compile(load(arg, extra))
    inputs = (p,) if p.exists() else ()
    if weights is not None:
        return graph, safetensors_source(graph, weights), None, (*inputs, weights), str(weights)
    return graph, seeded_source(graph), None, inputs, f"seeded init (seed {graph.spec.init.seed})"


_EXPORT_HELP = " ".join([
    "Write a spec and its weights as a Hugging Face model directory, the inverse of import-hf: config.json,",
    "model.safetensors and generation_config.json, which transformers' from_pretrained loads, plus the tokenizer",
    "files of the source directory.",
]) + "\n\n" + " ".join([
    "SPEC_OR_DIR is a spec (a file or library name; weights: its seeded init, or --weights), an `archc compile`",
    "directory (the weights inside model.onnx) or an `archc train` directory (its latest checkpoint).",
]) + "\n\n" + " ".join([
    f"The model type is the first of {_TYPES_HELP} whose config holds every axis of the spec (a spec made by",
    "import-hf tries its own type first); --model-type forces one. An axis the type cannot hold (a post-norm spec",
    "as llama, say) is refused with one line naming it. Either RoPE pairing (half or interleaved) fits every RoPE",
    "type, through a permutation of the q and k rows.",
])


@app.command("export-hf", help=_EXPORT_HELP)
def export_hf_cmd(
    source: Annotated[str, typer.Argument(metavar="SPEC_OR_DIR", help="Spec file, library name, or an archc compile/train directory.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write (new or empty, unless --force).")],
    model_type: Annotated[Optional[str], typer.Option("--model-type", help=f"Force the transformers model_type: {_TYPES_HELP}.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32 | float16 | bfloat16: the checkpoint's dtype (default: the spec's).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A safetensors file of archc graph parameter names (default: see above).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Init seed for a spec's seeded weights (overrides init.seed).")] = None,
    sets: SetOption = None,
    force: force_option(Replaces.OUTPUT_DIR) = False,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB, 2GiB (transformers' save_pretrained default: 50GB); a larger model is written as shards with model.safetensors.index.json.")] = "50GB",  # archc.hf.export.DEFAULT_MAX_SHARD_SIZE
) -> None:
    from archc.hf import SUPPORTED_TYPES
    from archc.hf.export import DTYPES, parse_shard_size

    # argument checks first: nothing heavy is imported before they pass
    if model_type is not None and model_type not in SUPPORTED_TYPES:
        raise UserError(f"--model-type {model_type}: choose one of {', '.join(SUPPORTED_TYPES)}")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    parse_shard_size(max_shard_size)
    if weights is not None:  # a FIFO or device named as such (was 'no such file')
        from archc.files import require_regular_file

        require_regular_file(weights, f"--weights {weights}", "a safetensors file of archc parameter names")
    from archc.atomic import check_dir_target

    protect = tuple(x for x in (Path(source), weights) if x is not None and x.exists())
    check_dir_target(output, force=force, label=f"-o {output}", protect=protect)  # before any heavy work
    from archc.hf.export import export_hf

    graph, get, source_dir, inputs, what = _export_source(source, list(sets or []), weights, seed)
    import signal

    def _terminated(signum, frame):  # SIGTERM unwinds like Ctrl-C, so the temporary directory is removed
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        result = export_hf(graph, output, get, model_type=model_type, dtype=dtype, force=force, source_dir=source_dir,
                           protect=inputs, max_shard_size=max_shard_size)
    finally:
        signal.signal(signal.SIGTERM, previous)
    from rich.console import Console
    from rich.markup import escape

    tok = f", tokenizer: {', '.join(result.copied)}" if result.copied else ""
    Console(highlight=False, soft_wrap=True).print(escape(
        f"wrote {output} (model_type {result.model_type}, {result.n_tensors} tensors, {result.dtype}, "
        f"{result.data_bytes / 2**20:.1f} MiB" + (f" in {result.shards} shards" if result.shards > 1 else "")
        + f"; weights: {what}{tok})"))
