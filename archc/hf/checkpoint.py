"""Reading a Hugging Face model directory: config.json and the checkpoint tensors.

Checkpoints, in the order transformers prefers them: model.safetensors.index.json (sharded),
model.safetensors, any other *.safetensors, pytorch_model.bin.index.json, pytorch_model.bin
(torch.load with weights_only=True: no code from the file runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from archc.errors import UserError


def read_config(model_dir: str | Path) -> dict:
    d = Path(model_dir)
    if not d.is_dir():
        raise UserError(f"{model_dir}: not a directory; give a Hugging Face model directory (with config.json)")
    path = d / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; a Hugging Face model directory has a config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def has_checkpoint(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return any(d.glob("*.safetensors")) or any((d / n).exists() for n in (
        "pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors.index.json"))


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = d / index
        if p.exists():
            try:
                weight_map = json.loads(p.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{p}: not a checkpoint index (needs a 'weight_map' object): {e}") from None
            files = [d / f for f in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise UserError(f"{p}: lists shard(s) not in the directory: {', '.join(missing)}")
            return files
    single = d / "model.safetensors"
    if single.exists():
        return [single]
    others = sorted(d.glob("*.safetensors"))
    if others:
        return others
    if (d / "pytorch_model.bin").exists():
        return [d / "pytorch_model.bin"]
    raise UserError(f"{model_dir}: no weights found (model.safetensors, a sharded *.safetensors index, or "
                    "pytorch_model.bin)")


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _safetensors_header(f: Path) -> dict:
    """{name: (dtype, shape)} from a safetensors file's JSON header, without reading the data."""
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
        return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f}: cannot read safetensors header: {e}") from None


def read_tensors(model_dir: str | Path, meta: bool = False) -> dict:
    """{checkpoint name: tensor} over all shards; a name in two shards is an error.

    meta=True: shapes only (tensors on torch's meta device, read from the safetensors headers), for
    checking a checkpoint against a spec without reading gigabytes."""
    import torch

    out: dict = {}
    for f in checkpoint_files(model_dir):
        if f.suffix == ".safetensors" and meta:
            part = {k: torch.empty(shape, dtype=getattr(torch, _SAFETENSORS_DTYPES.get(dt, "float32")), device="meta")
                    for k, (dt, shape) in _safetensors_header(f).items()}
        elif f.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                part = load_file(str(f))
            except (SafetensorError, OSError) as e:
                raise UserError(f"{f}: cannot read safetensors file: {e}") from None
        else:
            try:
                try:
                    part = torch.load(str(f), map_location="cpu", weights_only=True, mmap=meta)
                except RuntimeError:
                    if not meta:
                        raise
                    part = torch.load(str(f), map_location="cpu", weights_only=True)  # pre-zip format: no mmap
            except Exception as e:  # pickle errors come in many types
                raise UserError(f"{f}: cannot read PyTorch checkpoint: {e}") from None
            if not isinstance(part, dict) or not all(isinstance(t, torch.Tensor) for t in part.values()):
                raise UserError(f"{f}: expected a state dict (name -> tensor)")
            if meta:
                part = {k: t.to("meta") for k, t in part.items()}
        for name, t in part.items():
            if name in out:
                raise UserError(f"{f}: tensor {name} also appears in another shard")
            out[name] = t
    return out
