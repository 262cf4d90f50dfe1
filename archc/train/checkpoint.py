"""Training checkpoints: one folder per saved step, swapped into place whole.

DIR/checkpoints/step-00000100/
    model.safetensors   parameters under the graph's names (what `archc compile DIR` reads)
    state.pt            optimizer, scheduler, RNG and data position, the step and token count
DIR/checkpoints/latest  the folder name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder and renamed; `latest` is replaced atomically
after that, so an interrupted save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from archc.atomic import write_text_atomic
from archc.errors import UserError

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
KEEP = 2  # older checkpoints are removed once a newer one is complete


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    pointer = checkpoint_dir(out) / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    path = checkpoint_dir(out) / name
    if not name or not path.is_dir():
        raise UserError(f"{pointer}: names checkpoint {name!r}, which does not exist; the run folder is damaged "
                        f"(start again with --force)")
    return path


def save_checkpoint(out: Path, step: int, model_state: dict, train_state: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    final, tmp = root / name, root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    save_file(tensors, str(tmp / MODEL_FILE))  # no metadata: safetensors writes it in hash order, and the bytes should repeat
    torch.save(train_state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    point_latest(out, name)
    return final


def point_latest(out: Path, name: str) -> None:
    """Make the complete checkpoint folder `name` the latest, then remove all but the newest KEEP."""
    root = checkpoint_dir(out)
    write_text_atomic(root / "latest", name + "\n")
    olds = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name < name)
    for old in olds[: max(0, len(olds) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def load_model_weights(path: Path) -> dict:
    """Parameters of a checkpoint folder (or a model.safetensors file) as {graph name: tensor}."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from archc.files import refuse_duplicate_tensor_names, require_regular_file

    file = path / MODEL_FILE if path.is_dir() else path
    require_regular_file(file, str(file), "a safetensors checkpoint")  # a FIFO hung load_file
    refuse_duplicate_tensor_names(file)  # load_file keeps the last of two entries with one name
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: not a readable safetensors checkpoint ({str(e).splitlines()[0][:100]}); "
                        f"resume from an earlier checkpoint or start again with --force") from None


def load_train_state(path: Path) -> dict:
    import pickle

    import torch

    file = path / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise UserError(f"{file}: not a readable training state ({str(e).splitlines()[0][:100]}); "
                        f"resume from an earlier checkpoint or start again with --force") from None
    need = {"step", "tokens", "optimizer", "scheduler", "rng", "data"}
    if not isinstance(state, dict) or not need <= set(state):
        raise UserError(f"{file}: training state lacks {sorted(need - set(state if isinstance(state, dict) else {}))}; "
                        f"the checkpoint is damaged (start again with --force)")
    return state
