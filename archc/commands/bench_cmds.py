"""`archc bench`: generation speed on several backends beside the card's limits (archc/bench/harness.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import ForceOption, SetOption, load
from archc.commands.quant_options import (QuantAccuracyLevelOption, QuantBlockSizeOption, QuantHeadOption, QuantMethodOption,
                                          QuantOption, QuantSchemeOption, quant_settings)
from archc.errors import UserError
from archc.files import FORCE_HINT, check_output_file, nearest_existing


def _ints(text: str, option: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(x <= 0 for x in out):
        raise UserError(f"{option}: expected positive integers separated by commas, got '{text}'")
    return out


def write_json_atomic(path: Path, data: dict, *, overwrite: bool = True) -> None:
    """The report as JSON, written atomically (archc.atomic): a stopped run keeps the last whole file.
    overwrite=False (the first write without --force) refuses a file that appeared since the up-front check."""
    from archc.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1), make_folder=True, overwrite=overwrite, label=f"--json {path}",
                      exists_hint=FORCE_HINT)


def _check_work_dir(path: Path) -> None:
    """--work-dir is a directory, made if absent: the nearest existing path on the way must be a directory
    (a file there was `afile: File exists` from mkdir, naming neither the option nor the fix)."""
    p = nearest_existing(path)
    if not p.is_dir():
        raise UserError(f"--work-dir {path}: {p} exists and is not a directory; give a directory "
                        "(made if absent), or leave --work-dir out for a temporary one")


@app.command()
def bench(
    spec: Annotated[str, typer.Argument(help="Spec file, library name, or a Hugging Face model directory (its checkpoint: "
                                             "ort and genai backends).")],
    set_: SetOption = None,
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cuda",
    dtype: Annotated[str, typer.Option(help="fp16, bf16 or fp32.")] = "fp16",
    batch: Annotated[str, typer.Option(help="Batch size(s), comma-separated.")] = "1",
    prompt_len: Annotated[str, typer.Option(help="Prompt length(s), comma-separated.")] = "512",
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per run.")] = 128,
    backends: Annotated[str, typer.Option(help="ort, ort-nograph, torch, torch-compile, hf-eager, hf-sdpa, hf-compile, genai, genai-graph "
                                               "(onnxruntime-genai, ARCHC_GENAI_PYTHON); 'hf' = the three hf ones, 'all' = all but "
                                               "ort-nograph and genai.")] = "ort,torch,hf",
    quant: QuantOption = "none",
    quant_block_size: QuantBlockSizeOption = 32,
    quant_scheme: QuantSchemeOption = "symmetric",
    quant_accuracy_level: QuantAccuracyLevelOption = 0,
    quant_head: QuantHeadOption = False,
    quant_method: QuantMethodOption = "rtn",
    repeats: Annotated[int, typer.Option(help="Timed generate runs (median).")] = 3,
    work_dir: Annotated[Optional[Path], typer.Option(help="Where the ONNX export goes (default: a temp dir). An export "
                                                                 "there is reused only when archc made it from the same inputs.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure to this JSON file (an existing "
                                                                    "one only with --force).")] = None,
    force: ForceOption = False,
) -> None:
    """Measure prefill latency, decode tokens/s and peak memory per backend, beside the measured
    copy bandwidth and GEMM rate of the same card (decode roofline, prefill floor). The --quant options
    are compile's, for the ort export; genai's builder gets the same block size, scheme, accuracy level
    and head, and a setting it cannot express is refused."""
    import archc
    from archc.bench.harness import Bench, Shape, environment, parse_backends, render

    if device not in ("cuda", "cpu"):
        raise UserError(f"--device: '{device}' is not cuda or cpu")
    if repeats < 1:
        raise UserError("--repeats must be at least 1")
    names = parse_backends(backends)
    if work_dir is not None:
        _check_work_dir(work_dir)
    shapes = [Shape(b, p, new_tokens) for b in _ints(batch, "--batch") for p in _ints(prompt_len, "--prompt-len")]
    if dtype not in ("fp16", "bf16", "fp32"):
        raise UserError(f"--dtype: '{dtype}' is not fp16, bf16 or fp32")
    qs = quant_settings(quant, quant_block_size, quant_scheme, quant_accuracy_level, quant_head, quant_method, dtype)
    hf_dir = Path(spec) if (Path(spec) / "config.json").is_file() and not (Path(spec) / "spec.yaml").exists() else None
    if hf_dir is not None:
        from archc.hf import config_to_spec, read_config
        from archc.loader import spec_from_dict

        if set_:
            raise UserError("--set does not apply to a Hugging Face directory (its config.json decides the spec)")
        source = str(hf_dir / "config.json")
        s = spec_from_dict(config_to_spec(read_config(hf_dir), name=hf_dir.resolve().name, source=source), source=source)
    else:
        s = load(spec, set_)
    if json_out is not None:  # after loading (an input named as --json says so), before anything is exported or measured
        check_output_file(json_out, f"--json {json_out}", force=force, make_folder=True)
    if any(n in ("genai", "genai-graph") for n in names):  # bad input is one line before any model is built
        from archc.bench.genai import builder_args, check_hf_dir, genai_python

        builder_args(dtype, device, qs)  # --quant settings genai's builder cannot express
        genai_python()
        if hf_dir is not None:
            check_hf_dir(hf_dir)
    graph = archc.compile(s)
    b = Bench(graph, dtype=dtype, device=device, backends=names, repeats=repeats, work_dir=work_dir,
              log=lambda m: typer.echo(m, err=True), hf_dir=hf_dir, quant=qs)
    report = {"environment": environment(), "limits": None, "runs": []}
    try:
        for shape in shapes:
            run = b.run(shape)
            report["limits"] = b.limits
            report["runs"].append(run)
            render(run, b.limits)
            if json_out:  # the first write replaces a file only with --force; later ones replace this run's own
                write_json_atomic(json_out, report, overwrite=force or len(report["runs"]) > 1)
    finally:
        b.close()
