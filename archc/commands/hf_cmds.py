"""`archc import-hf DIR -o spec.yaml`: a Hugging Face model directory's config.json as an archc spec.

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
) -> None:
    """Write the archc spec equivalent to a Hugging Face config.json (llama, mistral, qwen2, gemma, gpt2,
    gpt_bigcode, gpt_neox, gptj, falcon, bloom, mpt, opt, phi, stablelm)."""
    from archc.hf import config_to_spec, read_config
    from archc.hf.checkpoint import has_checkpoint

    source = str(Path(model_dir) / "config.json")
    config = read_config(model_dir)
    data = config_to_spec(config, name=name or Path(model_dir).resolve().name, source=source)
    checked = ""
    if check_weights and has_checkpoint(model_dir):
        import archc
        from archc.hf import load_weights
        from archc.loader import spec_from_dict

        state = load_weights(archc.compile(spec_from_dict(data, source=source)), model_dir, meta=True)
        checked = f"; checkpoint matches ({len(state)} graph tensors)"
    from archc.loader import load_spec

    # the written file must load as the spec it describes
    write_text_atomic(output, spec_yaml(data, source), check=load_spec, label=f"-o {output}")
    typer.echo(f"wrote {output} ({data['name']}, model_type {config['model_type']}){checked}")
