"""Reading a Hugging Face model directory: config.json and the checkpoint tensors.

Checkpoints, in the order transformers prefers them: model.safetensors.index.json (sharded),
model.safetensors, any other *.safetensors, pytorch_model.bin.index.json, pytorch_model.bin
(torch.load with weights_only=True: no code from the file runs).
"""

from __future__ import annotations

import math
import stat
import warnings
from pathlib import Path

from archc.errors import UserError, one_line
from archc.files import note_input, read_json, read_safetensors_header, stat_path

MAX_JSON = 64 * 2**20  # config.json and index files are KBs to a few MB
MAX_ELEMENTS = 2**48  # no real tensor has more values; a header claiming more is corrupt


def read_config(model_dir: str | Path) -> dict:
    d = Path(model_dir)
    st = stat_path(d, str(model_dir))
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{model_dir}: not a directory; give a Hugging Face model directory (with config.json)")
    path = d / "config.json"
    if stat_path(path) is None:
        raise UserError(f"{path}: no such file; a Hugging Face model directory has a config.json")
    data = read_json(path, limit=MAX_JSON)  # a regular file only: a FIFO or /dev/zero is refused, not read
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
            index_data = read_json(p, limit=MAX_JSON)
            weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
            if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and v and "/" not in v and v not in (".", "..")
                    for k, v in weight_map.items()):
                raise UserError(f"{p}: not a checkpoint index (needs a 'weight_map' object of tensor name -> "
                                "shard file name in this directory)")
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
    """{name: (dtype, shape)} from a safetensors file's JSON header, without reading the data; every
    entry is checked (a known dtype, a shape of non-negative ints of sane size) before torch sees it."""
    try:
        st = f.stat()
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{f}: not a regular file")
    except OSError as e:
        raise UserError(one_line(f"{f}: cannot read safetensors header: {e}")) from None
    header = read_safetensors_header(f)  # a name given twice is refused, not read as its last entry
    note_input(f)
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        dt = v.get("dtype") if isinstance(v, dict) else None
        shape = v.get("shape") if isinstance(v, dict) else None
        if dt not in _SAFETENSORS_DTYPES:
            raise UserError(one_line(f"{f}: tensor {k!r}: dtype {dt!r} is not a safetensors dtype"))
        if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape):
            raise UserError(one_line(f"{f}: tensor {k!r}: shape {shape!r} is not a list of non-negative integers"))
        if math.prod(shape) > MAX_ELEMENTS:
            raise UserError(one_line(f"{f}: tensor {k!r}: shape {shape} has more values than any checkpoint"))
        out[k] = (dt, shape)
    return out


def _torch_load(f: Path, mmap: bool):
    """torch.load with weights_only=True (no code from the file runs); its multi-line refusals and
    warnings become one line."""
    import torch

    note_input(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(str(f), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - pickle errors come in many types
            if mmap and isinstance(e, RuntimeError):
                return _torch_load(f, mmap=False)  # pre-zip format: no mmap
            text = str(e)
            if "WeightsUnpickler error:" in text:  # torch's refusal: its reason, not its advice to disable the check
                reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
                raise UserError(one_line(f"{f}: not a checkpoint archc loads safely (torch.load weights_only refused it: "
                                         f"{reason[:200]}); no code from the file ran")) from None
            first = " ".join(text.split())[:200] or type(e).__name__
            raise UserError(one_line(f"{f}: cannot read PyTorch checkpoint ({type(e).__name__}: {first}); "
                                     "archc loads state dicts of tensors only")) from None


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

            _safetensors_header(f)  # checked first: safetensors itself may fail on a hostile header with anything
            try:
                part = load_file(str(f))
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise UserError(one_line(f"{f}: cannot read safetensors file: {e}")) from None
        else:
            part = _torch_load(f, mmap=meta)
            if not isinstance(part, dict) or not all(isinstance(t, torch.Tensor) for t in part.values()):
                raise UserError(f"{f}: expected a state dict (name -> tensor)")
            if meta:
                part = {k: t.to("meta") for k, t in part.items()}
        for name, t in part.items():
            if name in out:
                raise UserError(f"{f}: tensor {name} also appears in another shard")
            out[name] = t
    return out
