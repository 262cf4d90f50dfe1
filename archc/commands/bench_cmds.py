"""`archc bench`: generation speed on several backends beside the card's limits (archc/bench/harness.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import SetOption, load
from archc.errors import UserError


def _ints(text: str, option: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(x <= 0 for x in out):
        raise UserError(f"{option}: expected positive integers separated by commas, got '{text}'")
    return out


def write_json_atomic(path: Path, data: dict) -> None:
    """The report as JSON, written atomically (archc.atomic): a stopped run keeps the last whole file."""
    from archc.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1), make_folder=True)


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
    quant: Annotated[str, typer.Option(help="none | int4 | int8: the ort export's weight-only quantization (compile --quant, "
                                            "block 32, symmetric); genai builds the same bit width.")] = "none",
    repeats: Annotated[int, typer.Option(help="Timed generate runs (median).")] = 3,
    work_dir: Annotated[Optional[Path], typer.Option(help="Where the ONNX export goes (default: a temp dir).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure to this JSON file.")] = None,
) -> None:
    """Measure prefill latency, decode tokens/s and peak memory per backend, beside the measured
    copy bandwidth and GEMM rate of the same card (decode roofline, prefill floor)."""
    import archc
    from archc.bench.harness import Bench, Shape, environment, parse_backends, render

    if device not in ("cuda", "cpu"):
        raise UserError(f"--device: '{device}' is not cuda or cpu")
    if repeats < 1:
        raise UserError("--repeats must be at least 1")
    names = parse_backends(backends)
    shapes = [Shape(b, p, new_tokens) for b in _ints(batch, "--batch") for p in _ints(prompt_len, "--prompt-len")]
    from archc.dtypes import DType
    from archc.quant import QuantKind, QuantSettings

    if quant not in {v.value for v in QuantKind}:
        raise UserError(f"--quant {quant}: choose one of {', '.join(v.value for v in QuantKind)}")
    if dtype not in ("fp16", "bf16", "fp32"):
        raise UserError(f"--dtype: '{dtype}' is not fp16, bf16 or fp32")
    qs = QuantSettings(QuantKind(quant)).check(DType.from_short(dtype))
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
    if any(n in ("genai", "genai-graph") for n in names):  # bad input is one line before any model is built
        from archc.bench.genai import check_hf_dir, genai_python

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
            if json_out:
                write_json_atomic(json_out, report)
    finally:
        b.close()
