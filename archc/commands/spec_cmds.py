"""Spec commands: `validate`, `show`, `schema`, `new`.

All four are light: they read YAML and validate with pydantic; `show` also compiles the component
graph and reads costs off it (archc.cost). Nothing here imports torch or onnxruntime
(tests/cli/test_cli_spec.py checks).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.atomic import write_text_atomic
from archc.cli import app
from archc.commands.common import ForceOption, SetOption, load, resolve_spec_path
from archc.commands.quant_options import (QuantAccuracyLevelOption, QuantBlockSizeOption, QuantHeadOption, QuantMethodOption,
                                          QuantOption, QuantSchemeOption, quant_settings)
from archc.dtypes import DType
from archc.errors import UserError
from archc.files import FORCE_HINT, check_output_file
from archc.loader import apply_sets, library_dir, library_spec, library_specs, load_spec
from archc.words import human, human_bytes

SCHEMA_FILE = "archc-spec.schema.json"


# ------------------------------------------------------------------------------------------------
# helpers


def _console(stderr: bool = False):
    from rich.console import Console

    # soft_wrap: a message stays one line however narrow the terminal (scripts grep these lines).
    # markup=False: names, references and file names are user text, printed as written ('[/]' in a
    # name is not a rich tag); colour comes from Text styles.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)


def spec_json_schema() -> dict:
    """The JSON Schema of a spec file, for editors (yaml-language-server) and `archc schema`.

    Pydantic's schema of `Spec`, plus what the file format adds: the `extends` key, and required
    fields only when the file does not extend another (an extending file may override one field).
    Derived fields stay in the schema: a spec may state them, and the loader checks they agree.
    """
    from archc.spec import Spec

    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archc spec"
    schema["description"] = (
        "A decoder-only language model architecture for archc. Files may `extends:` another spec "
        "(a relative path or a library name such as llama) and override any field."
    )
    schema["properties"] = {
        "extends": {
            "type": "string",
            "minLength": 1,
            "description": "Spec this file builds on: a path relative to this file, or a library spec name (llama, palm, ...).",
        },
        **schema["properties"],
    }
    _any_of_for_tagged(schema)
    top_required = schema.pop("required", [])
    nested_required: dict[str, list[str]] = {}
    for name, sub in schema.get("$defs", {}).items():
        if sub.get("required"):
            nested_required[name] = sub.pop("required")
    # Which top-level property holds each $def with required fields (AttentionSpec -> attention).
    by_property = {}
    for prop, sub in schema["properties"].items():
        ref = sub.get("$ref", "")
        for name, req in nested_required.items():
            if ref == f"#/$defs/{name}":
                by_property[prop] = {"required": req}
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {"required": top_required, "properties": by_property}
    head = ("$schema", "title", "description", "type", "additionalProperties", "properties", "if", "then")
    return {**{k: schema[k] for k in head if k in schema}, **{k: v for k, v in schema.items() if k not in head}}


def _any_of_for_tagged(node) -> None:
    """Tagged sections (position, optimizer, schedule) come out as oneOf over their kinds; in a file
    that extends another, `optimizer: {lr: 1e-4}` omits the kind and fits every kind, which oneOf
    rejects. anyOf accepts it; a kind that is given still selects one variant (kind is a const)."""
    if isinstance(node, dict):
        if "oneOf" in node and "discriminator" in node:
            node["anyOf"] = node.pop("oneOf")
        for v in node.values():
            _any_of_for_tagged(v)
    elif isinstance(node, list):
        for v in node:
            _any_of_for_tagged(v)


def schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------
# validate


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Spec files, library names (llama) or compiled model folders.")],
    set_: SetOption = None,
    all_errors: Annotated[bool, typer.Option("--all-errors", help="List every problem of an invalid spec, one line each (default: the first, and how many more).")] = False,
) -> None:
    """Check spec files: one line per file; exit 0 only if all are valid (2 otherwise)."""
    # Validation only: the graph is not built here, so a spec with absurd sizes is judged at once
    # (`archc show` builds it and counts parameters).
    out, err = _console(), _console(stderr=True)
    bad = 0
    for arg in files:
        try:
            spec = load(arg, set_)
        except UserError as e:
            bad += 1
            from rich.text import Text

            problems = getattr(e, "problems", None) if all_errors else None
            for problem in problems or [e]:
                err.print(Text.assemble(("invalid", "bold red"), " ", str(problem)))
            continue
        from rich.text import Text

        a = spec.attention
        out.print(Text.assemble(("ok", "green"), f" {arg}: {spec.name} (d_model {spec.d_model}, {spec.n_layers} layers, "
                  f"{a.n_heads} heads / {a.kv_heads} kv, {spec.position.kind.value}, {spec.norm.placement.value}-{spec.norm.kind.value})"))
    if bad:
        raise typer.Exit(2)


# ------------------------------------------------------------------------------------------------
# show


def _axis_rows(spec) -> list[tuple[str, str]]:
    """(axis, value) rows that say every axis of the resolved spec in words."""
    a, n, m, p, r, e, i, t = (spec.attention, spec.norm, spec.mlp, spec.position, spec.residual,
                              spec.embedding, spec.init, spec.training)
    norm = f"{n.kind.value}, {'bias' if n.bias else 'no bias'}, eps {n.eps:g}"
    if n.scale.value != "weight":
        norm += f", scale {n.scale.value}"
    placement = n.placement.value
    if placement == "deepnorm":
        placement += f" (alpha {n.deepnorm_alpha:.4g}, beta {n.deepnorm_beta:.4g})"
    placement += ", final norm" if n.final else ", no final norm"
    pos = p.kind.value
    if pos == "rope":
        pos += f" (theta {p.theta:g}, {p.rotary_dim}/{a.head_dim} dims rotated, {p.style.value})"
    elif pos in ("learned", "glm2d"):
        pos += f" ({p.max_positions} positions" + (f", offset {p.offset}" if pos == "learned" and p.offset else "") + ")"
    elif pos == "alibi":
        pos += f" (max_bias {p.max_bias:g})"
    elif pos == "sinusoidal":
        pos += f" (base {p.base:g})"
    attn = f"{a.n_heads} heads, {a.kv_heads} kv heads ({a.sharing.value}), head_dim {a.head_dim}"
    attn_more = [f"mask {a.mask.value}", f"softmax scale {a.softmax_scale:.4g}"]
    if a.sliding_window:
        attn_more.append(f"sliding window {a.sliding_window}")
    attn_more.append(f"bias qkv {'yes' if a.qkv_bias else 'no'}, out {'yes' if a.out_bias else 'no'}")
    if a.kernel.value != "default":
        attn_more.append(f"kernel {a.kernel.value}")
    residual = r.layout.value + (f" ({r.parallel_norms.value} norms)" if r.parallel_norms else "")
    emb = [e.output.value]
    if e.norm.value != "none":
        emb.append(f"{e.norm.value} after embedding")
    if e.multiplier != 1.0:
        emb.append(f"x {e.multiplier if isinstance(e.multiplier, str) else f'{e.multiplier:g}'} ({spec.embedding_multiplier:.4g})")
    if e.head_bias:
        emb.append("head bias")
    if e.head_vocab_size != spec.vocab_size:
        emb.append(f"head rows {e.head_vocab_size}")
    opt = t.optimizer
    opt_s = f"{opt.kind.value}, lr {opt.lr:g}"
    if hasattr(opt, "betas"):
        opt_s += f", betas {opt.betas[0]:g}/{opt.betas[1]:g}"
    if getattr(opt, "weight_decay", 0):
        opt_s += f", weight decay {opt.weight_decay:g}"
    sch = t.schedule
    sch_s = sch.kind.value + (f", warm-up {sch.warmup_steps}" if sch.warmup_steps else "")
    if hasattr(sch, "total_steps"):
        sch_s += f", {sch.total_steps} steps, floor {sch.min_lr_ratio:g}"
    return [
        ("sizes", f"vocab {spec.vocab_size}, d_model {spec.d_model}, {spec.n_layers} layers, max_seq_len {spec.max_seq_len}"),
        ("dtype / tokenizer", f"{spec.dtype.value} / {spec.tokenizer.value}"),
        ("norm", norm),
        ("norm placement", placement),
        ("mlp", f"{m.activation.value}, d_ff {m.d_ff}, {'bias' if m.bias else 'no bias'}"),
        ("position", pos),
        ("attention", attn),
        ("", ", ".join(attn_more)),
        ("residual", residual),
        ("embedding", ", ".join(emb)),
        ("init", f"{i.scheme.value}, std {i.std:g}, seed {i.seed}"),
        ("training", opt_s),
        ("", sch_s + (f", grad clip {t.grad_clip:g}" if t.grad_clip else "")),
    ]


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Spec file, library name (llama) or compiled model folder.")],
    set_: SetOption = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", min=1, help="Context length for FLOPs/token; default max_seq_len.")] = None,
    quant: QuantOption = "none",
    quant_block_size: QuantBlockSizeOption = 32,
    quant_scheme: QuantSchemeOption = "symmetric",
    quant_accuracy_level: QuantAccuracyLevelOption = 0,
    quant_head: QuantHeadOption = False,
    quant_method: QuantMethodOption = "rtn",
) -> None:
    """Summarise a spec: every axis, head_dim, parameters by component, FLOPs/token, KV-cache bytes/token, weight bytes.
    The --quant options are compile's (archc.commands.quant_options): with --quant, also the weight bytes as compile
    stores them (a model folder: what it was compiled with too); accuracy level and method do not change the bytes."""
    from rich.table import Table

    from archc.cost import cost, light_graph

    from archc.quant import QuantSettings, model_dir_quant, weight_bytes

    # checked as compile checks them at its default --dtype fp32: show has no --dtype, and the bytes are the spec's dtype's
    asked = quant_settings(quant, quant_block_size, quant_scheme, quant_accuracy_level, quant_head, quant_method, "fp32")
    spec = load(file, set_)
    stored = model_dir_quant(file)  # a compiled folder: its metadata says how its weights are stored
    lg = light_graph(spec)
    c = cost(lg)  # a few layers built, the rest in closed form
    S = seq_len or spec.max_seq_len

    arch = Table(title=f"{spec.name} ({file})", title_justify="left", show_header=False, box=None, pad_edge=False)
    arch.add_column("axis", style="bold")
    arch.add_column("value")
    if spec.reference:
        arch.add_row("reference", spec.reference)
    for k, v in _axis_rows(spec):
        arch.add_row(k, v)

    params = Table(title="parameters", title_justify="left", box=None, pad_edge=False)
    params.add_column("component", style="bold")
    params.add_column("count", justify="right")
    params.add_column("share", justify="right")
    for group, n in c.params_by_group.items():
        params.add_row(group, f"{n:,}", f"{100 * n / c.params:.1f}%")
    params.add_row("total", f"{c.params:,}", f"({human(c.params)})", style="bold")

    compute = Table(title="per token", title_justify="left", box=None, pad_edge=False)
    compute.add_column("quantity", style="bold")
    compute.add_column("value", justify="right")
    flops = c.flops_per_token(S)
    compute.add_row(f"forward FLOPs at seq len {S}", f"{flops:,} ({human(flops, 'FLOP')})")
    window = f", window {c.sliding_window}" if c.sliding_window and c.sliding_window < S else ""
    for dtype in (DType.float16, DType.bfloat16, DType.float32):
        b = c.kv_bytes_per_token(dtype)
        compute.add_row(f"KV cache, {dtype.value}", f"{b:,} B ({human_bytes(c.kv_bytes_at(S, dtype))} at {S} tokens{window})")

    weights = Table(title="weights", title_justify="left", box=None, pad_edge=False)
    weights.add_column("stored as", style="bold")
    weights.add_column("bytes", justify="right")
    dense = weight_bytes(lg, spec.dtype, QuantSettings())
    weights.add_row(f"{spec.dtype.value}", f"{dense:,} ({human_bytes(dense)})")
    for label, q in (("compiled", stored), ("--quant", asked)):
        if q is not None and q.active:
            n = weight_bytes(lg, spec.dtype, q)
            weights.add_row(f"{spec.dtype.value} {q.short()}" + (" (this folder)" if label == "compiled" else ""),
                            f"{n:,} ({human_bytes(n)}, x{n / dense:.3f})")

    out = _console()
    out.print(arch)
    out.print()
    out.print(params)
    out.print()
    out.print(compute)
    out.print()
    out.print(weights)


# ------------------------------------------------------------------------------------------------
# schema


@app.command()
def schema(
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
    force: ForceOption = False,
) -> None:
    """Print the JSON Schema of spec files (specs/archc-spec.schema.json is this output)."""
    if output is not None:
        check_output_file(output, f"-o {output}", force=force)
    text = schema_text()
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_text_atomic(output, text, overwrite=force, label=f"-o {output}", exists_hint=FORCE_HINT)


# ------------------------------------------------------------------------------------------------
# new

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="Name of the new spec (letters, digits, . _ -).")],
    family: Annotated[str, typer.Option("--from", help="Library spec to extend (llama, palm, glm, ...) or a spec file.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Where to write; default NAME.yaml here.")] = None,
    set_: SetOption = None,
) -> None:
    """Write a new spec that extends a library spec (never overwrites an existing file)."""
    if not _NAME.match(name):
        raise UserError(f"NAME {name!r}: use letters, digits, '.', '_' or '-' (it names the spec and its file)")
    out = output or Path(f"{name}.yaml")
    if out.exists():
        raise UserError(f"{out} already exists; choose another name or pass -o with a new path")
    lib = library_spec(family)
    if lib is not None and not Path(family).exists():
        extends = lib.stem  # by library name: the new file keeps working wherever it is moved
        base_path = lib
    else:
        base_path = resolve_spec_path(family)
        if not base_path.is_file():
            names = ", ".join(p.stem for p in library_specs())
            raise UserError(f"--from {family!r}: not a library spec ({names}) nor a spec file")
        extends = os.path.relpath(base_path.resolve(), (out.parent if str(out.parent) else Path(".")).resolve())
    base = load(str(base_path))  # the base must itself be valid
    schema_ref = os.path.relpath(library_dir() / SCHEMA_FILE, (out.parent if str(out.parent) else Path(".")).resolve())
    if schema_ref.startswith(os.pardir + os.sep + os.pardir):  # far away: an absolute path reads better
        schema_ref = str(library_dir() / SCHEMA_FILE)
    lines = [
        f"# yaml-language-server: $schema={Path(schema_ref).as_posix()}",
        f"# {name}: starts from {base.name} ({extends}); every field written here overrides it.",
        "# Inspect with `archc show " + out.name + "`, check with `archc validate " + out.name + "`.",
    ]
    fields: dict = {"extends": extends, "name": name, "description": ""}
    # --set FIELD=VALUE becomes a field of the new file. The loader's apply_sets builds the same nested
    # mapping; its merge rules (twin fields, kind switch) have nothing to act on among these three flat
    # fields, and apply when the written file is loaded over its base.
    lines += [f"{k}: {_flow(v)}" for k, v in apply_sets(fields, {}, set_ or []).items()]
    lines += [
        "# Examples of overrides:",
        f"# n_layers: {base.n_layers}",
        f"# attention: {{n_heads: {base.attention.n_heads}, kv_heads: {base.attention.kv_heads}}}",
        f"# mlp: {{activation: {base.mlp.activation.value}, d_ff: {base.mlp.d_ff}}}",
    ]
    text = "\n".join(lines) + "\n"
    # Validated as written: loaded from the temporary file beside the destination (so a relative
    # extends resolves as it will), then linked into place without replacing a file that appeared.
    write_text_atomic(out, text, overwrite=False, check=load_spec)
    _console().print(f"wrote {out} (extends {extends})")


def _flow(value) -> str:
    """One value as single-line YAML (JSON scalars are valid YAML; plain names stay unquoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*", value):
        import yaml

        from archc.loader import _Loader

        if yaml.load(value, Loader=_Loader) == value:  # reads back as this same string: no quotes needed
            return value
    return json.dumps(value)
