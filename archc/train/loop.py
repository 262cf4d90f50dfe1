"""`archc train`: the training loop over an emitted GraphModel.

The loop is built in the order a parallel wrapper needs (torchtitan's): build the model (full
precision master weights, graph parameter names), load resumed weights, apply `parallelize(model)`
(FSDP / tensor parallel, archc.dist; identity here), then create the optimizer and schedule from the
spec's training section (archc.training), then step. Model code never knows about parallelism.

Precision: bf16 autocast on CUDA (master weights and optimizer state stay float32), float32 on CPU.
Determinism: the data order is a seeded permutation (archc.train.data), the init is the spec's
seeded init, and the checkpoint carries the optimizer, scheduler, RNG and data position, so on the
CPU N steps straight equal N/2 steps, --resume, N/2 steps bit for bit (tests/train).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from archc.errors import UserError
from archc.spec import Spec
from archc.train.data import DataPosition, TokenDType, open_data
from archc.train.device import pick_device

MARKER = "archc-train.json"
RUN_FORMAT = 1


@dataclass
class TrainConfig:
    spec: Spec
    data: Path
    out: Path
    steps: int = 100
    batch: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    eval_every: int = 50  # 0: evaluate only at the end
    eval_batches: int = 4
    save_every: int = 0  # 0: save at every evaluation and at the end
    resume: bool = False
    force: bool = False
    compile: bool = False
    device: str = "auto"
    val_fraction: float = 0.1
    data_dtype: TokenDType = TokenDType.auto
    tokenizer: Optional[Path] = None
    activation_checkpointing: bool = False
    progress: bool | None = None  # None: a live display when stderr is a terminal


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    checkpoint: Path | None
    interrupted: bool = False
    history: list = field(default_factory=list)


class TrainInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the loop saved a checkpoint at `result.step` and stopped."""

    def __init__(self, result: TrainResult, signame: str):
        super().__init__(signame)
        self.result, self.signame = result, signame


# ------------------------------------------------------------------------------------------------
# The output folder


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def prepare_out(cfg: TrainConfig) -> None:
    """Create or check DIR. Never touches a folder that is not an archc run unless --force."""
    import shutil

    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the run")
    if cfg.resume:
        if not is_run_dir(out):
            raise UserError(f"--resume: {out} is not an archc training folder (no {MARKER}); drop --resume to start a new run there")
        return
    if out.is_dir() and any(out.iterdir()):
        if not cfg.force:
            what = "holds a training run; pass --resume to continue it" if is_run_dir(out) else "exists and is not empty"
            raise UserError(f"--out {out}: {what}, or --force to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create: {e.strerror}") from None


def _spec_yaml(spec: Spec) -> str:
    import yaml

    return yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False)


def write_run_files(cfg: TrainConfig, tokenizer_json: str | None) -> None:
    from archc.atomic import write_text_atomic

    write_text_atomic(cfg.out / "spec.yaml", _spec_yaml(cfg.spec))
    if tokenizer_json is not None:
        write_text_atomic(cfg.out / "tokenizer.json", tokenizer_json)
    marker = {"format": RUN_FORMAT, "spec": cfg.spec.name, "data": str(cfg.data), "seq_len": cfg.seq_len,
              "batch": cfg.batch, "grad_accum": cfg.grad_accum, "tokenizer": tokenizer_json is not None}
    write_text_atomic(cfg.out / MARKER, json.dumps(marker, indent=1) + "\n")


def check_resume_matches(cfg: TrainConfig) -> None:
    import yaml

    saved = yaml.safe_load((cfg.out / "spec.yaml").read_text())
    if saved != yaml.safe_load(_spec_yaml(cfg.spec)):
        raise UserError(f"--resume: the spec differs from the one {cfg.out} was trained with; pass {cfg.out / 'spec.yaml'} as SPEC")
    marker = json.loads((cfg.out / MARKER).read_text())
    if marker.get("seq_len") != cfg.seq_len:
        raise UserError(f"--resume: {cfg.out} was trained with --seq-len {marker.get('seq_len')}; pass the same --seq-len")


# ------------------------------------------------------------------------------------------------
# Pieces a parallel trainer reuses


def autocast_for(device):
    """bf16 autocast on CUDA; the CPU trains in float32 (and is bit-exact on resume)."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def build_train_model(graph, device, *, weights: dict | None = None, activation_checkpointing: bool = False):
    """The GraphModel in float32 (master weights) on `device`, in train mode."""
    from exporters.torch_module import build_module

    model = build_module(graph, weights=weights, device=device)
    if activation_checkpointing:
        model.set_activation_checkpointing(True)
    return model.train()


def rng_state(device) -> dict:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def stop_on_signals():
    """SIGINT / SIGTERM set a flag the loop reads between steps (it then saves and stops); a second
    Ctrl-C falls through to Python's KeyboardInterrupt."""
    flag: dict = {"signal": None}
    previous = {}

    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: no handlers, the loop just runs
        pass
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------
# Progress and logs


class _Progress:
    """Live rich progress on a terminal; plain lines at evaluations otherwise."""

    def __init__(self, total: int, start: int, live: bool):
        self.live, self.total = live, total
        self.bar = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                                TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float, tok_s: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=f"loss {loss:.4f}  {tok_s:,.0f} tok/s  lr {lr:.2e}")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _read_log(path: Path, upto: int) -> list[dict]:
    """The log's records up to step `upto` (a resumed run drops what came after its checkpoint)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if r.get("step", 0) <= upto:
            records.append(r)
    return records


def _write_plot(out: Path, records: list[dict]) -> None:
    from archc.atomic import write_atomic
    from archc.train.plot import loss_png

    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and math.isfinite(r["val_loss"])]
    write_atomic(out / "loss.png", loss_png(train, val))


# ------------------------------------------------------------------------------------------------
# The loop: one body for one process and for torchrun's (archc.parallel.train)


def check_options(cfg: TrainConfig) -> None:
    """The run options a loop checks before it opens data or a process group."""
    spec = cfg.spec
    for name, v in (("--steps", cfg.steps), ("--batch", cfg.batch), ("--seq-len", cfg.seq_len), ("--grad-accum", cfg.grad_accum),
                    ("--eval-batches", cfg.eval_batches)):
        if v < 1:
            raise UserError(f"{name} {v}: must be at least 1")
    for name, v in (("--eval-every", cfg.eval_every), ("--save-every", cfg.save_every)):
        if v < 0:  # was taken: step % -1 == 0 evaluated (and saved) at every step, -5 acted as 5
            raise UserError(f"{name} {v}: give 0 (see --help) or a number of steps")
    if cfg.seq_len > spec.max_seq_len:
        raise UserError(f"--seq-len {cfg.seq_len} is beyond the spec's max_seq_len {spec.max_seq_len}; "
                        f"pass --seq-len {spec.max_seq_len} or less (or --set max_seq_len=...)")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val-fraction {cfg.val_fraction}: must be in [0, 1)")


class RunLog:
    """DIR/log.jsonl and the records behind the plot. A resumed run drops the records after its
    checkpoint; only the writer (rank 0 under torchrun) touches the files."""

    def __init__(self, out: Path, upto: int, writer: bool):
        self.out, self.writer = out, writer
        self.path = out / "log.jsonl"
        self.records: list[dict] = []
        if writer:  # the others would read the file while the writer rewrites it; they keep only new records
            self.records = _read_log(self.path, upto)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self.writer:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if self.writer:
            _write_plot(self.out, self.records)


@dataclass
class LoopHooks:
    """What spreading over processes changes in the loop; `one_process` gives the plain loop's.

    to_device   a batch of ids (numpy) -> this process's share of it on the device
    mean        a loss tensor of this process -> the float every process agrees on
    clip        clip the gradients at the spec's grad_clip -> the norm before clipping (None: no clip)
    save        (step, tokens) -> the checkpoint folder written (every process calls it)
    any_stopped this process's stop flag -> whether any process was stopped by a signal
    writer      this process writes the log, the plot and the progress
    record      fields added to every step's log record (e.g. the world size)
    """

    to_device: Callable
    mean: Callable
    clip: Callable[[], Optional[float]]
    save: Callable[[int, int], Path]
    any_stopped: Callable[[bool], bool] = bool
    writer: bool = True
    record: dict = field(default_factory=dict)


def run_steps(cfg: TrainConfig, hooks: LoopHooks, *, loss_fn, optimizer, scheduler, data, step: int, tokens: int,
              model, amp) -> TrainResult:
    """Step from `step` to cfg.steps: accumulate, clip, step, log, evaluate and save as cfg says.
    Raises TrainInterrupted after saving on SIGINT/SIGTERM (any process's, under torchrun)."""
    import torch

    from archc.train.checkpoint import latest_checkpoint

    log = RunLog(cfg.out, step, hooks.writer)
    val_batches = data.val.fixed_batches(cfg.batch, cfg.eval_batches) if data.val else []
    tokens_per_step = cfg.batch * cfg.seq_len * cfg.grad_accum

    def evaluate() -> float | None:
        if not val_batches:
            return None
        model.eval()
        total = 0.0
        with torch.no_grad(), amp:
            for b in val_batches:
                t = hooks.to_device(b)
                total += hooks.mean(loss_fn(t[:, :-1], t[:, 1:]))
        model.train()
        return total / len(val_batches)

    def save() -> Path:
        path = hooks.save(step, tokens)
        log.plot()
        return path

    live = hooks.writer and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
    progress = _Progress(cfg.steps, step, live)
    last_loss, val_loss, ckpt_path = None, None, None
    t_start, step0 = time.perf_counter(), step
    try:
        with stop_on_signals() as stop:
            while step < cfg.steps:
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                total = None
                for _ in range(cfg.grad_accum):
                    batch = hooks.to_device(data.train.next_batch(cfg.batch))
                    with amp:
                        loss = loss_fn(batch[:, :-1], batch[:, 1:])
                    (loss / cfg.grad_accum).backward()
                    total = loss.detach() if total is None else total + loss.detach()
                grad_norm = hooks.clip()
                try:
                    optimizer.step()
                except RuntimeError as e:  # a finite but huge lr (1e308): torch's float32 step size overflows, was a traceback
                    if "without overflow" not in str(e):
                        raise
                    raise UserError(f"the optimizer step overflowed at step {step + 1} (learning rate "
                                    f"{optimizer.param_groups[0]['lr']:g}); lower the learning rate "
                                    "(--set training.optimizer.lr=...)") from None
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += tokens_per_step
                last_loss = hooks.mean(total) / cfg.grad_accum
                dt = time.perf_counter() - t0
                rec = {"step": step, "loss": last_loss, "lr": lr, "tokens": tokens, "tok_s": tokens_per_step / dt,
                       "elapsed_s": time.perf_counter() - t_start, **hooks.record}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                log.append(rec)
                progress.update(step, last_loss, tokens_per_step / dt, lr)
                if not math.isfinite(last_loss):
                    raise UserError(f"loss became {last_loss} at step {step}; lower the learning rate (--set training.optimizer.lr=...)")
                evaluating = step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)
                if evaluating:
                    val_loss = evaluate()
                    if val_loss is not None:
                        log.append({"step": step, "val_loss": val_loss})
                    if hooks.writer and not live:
                        progress.note(f"step {step}/{cfg.steps}  loss {last_loss:.4f}" + (f"  val {val_loss:.4f}" if val_loss is not None else "")
                                      + f"  {(step - step0) * tokens_per_step / (time.perf_counter() - t_start):,.0f} tok/s")
                # Under torchrun a signal reaches the processes at different moments: they agree (any
                # stopped -> all stop) before the collective save, so none waits in another step's collectives.
                if hooks.any_stopped(bool(stop["signal"])) and not stop["signal"]:
                    stop["signal"] = "SIGTERM"
                saving = step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and evaluating)
                if saving or stop["signal"]:
                    ckpt_path = save()
                if stop["signal"]:
                    raise TrainInterrupted(TrainResult(step, tokens, last_loss, val_loss, ckpt_path, True, log.records), stop["signal"])
            if ckpt_path is None:  # nothing left to do (resumed at the last step): the latest checkpoint stands
                ckpt_path = latest_checkpoint(cfg.out)
                log.plot()
    finally:
        progress.close()
    return TrainResult(step, tokens, last_loss, val_loss, ckpt_path, False, log.records)


def train(cfg: TrainConfig, *, parallelize: Callable | None = None) -> TrainResult:
    """Run (or resume) training as `cfg` says; `parallelize(model) -> model` runs between building
    the model and creating the optimizer. Raises TrainInterrupted after saving on SIGINT/SIGTERM."""
    import torch

    import archc
    from archc.train.checkpoint import latest_checkpoint, load_model_weights, load_train_state, save_checkpoint
    from archc.training import build_optimizer, build_scheduler, clip_gradients

    spec = cfg.spec
    check_options(cfg)
    device = pick_device(cfg.device)
    data = open_data(cfg.data, vocab_size=spec.vocab_size, seq_len=cfg.seq_len, seed=spec.init.seed,
                     val_fraction=cfg.val_fraction, batch=cfg.batch, dtype=cfg.data_dtype, tokenizer=cfg.tokenizer)
    prepare_out(cfg)

    resumed = None
    if cfg.resume:
        check_resume_matches(cfg)
        ckpt = latest_checkpoint(cfg.out)
        if ckpt is None:
            raise UserError(f"--resume: {cfg.out} has no checkpoint yet; start again without --resume (and --force)")
        resumed = (ckpt, load_model_weights(ckpt), load_train_state(ckpt))
    else:
        write_run_files(cfg, data.tokenizer_json)

    graph = archc.compile(spec)
    try:
        model = build_train_model(graph, device, weights=resumed[1] if resumed else None,
                                  activation_checkpointing=cfg.activation_checkpointing)
    except ValueError as e:  # weights of another graph
        raise UserError(f"--resume: {resumed[0] if resumed else ''}: {e}") from None
    if parallelize is not None:
        model = parallelize(model)
    optimizer = build_optimizer(graph, model)
    scheduler = build_scheduler(graph, optimizer)
    step, tokens = 0, 0
    if resumed:
        state = resumed[2]
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], device)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise UserError(f"--resume: {resumed[0] / 'state.pt'}: does not fit this model ({str(e)[:100]})") from None
        step, tokens = int(state["step"]), int(state["tokens"])
        data.train.position = DataPosition(**state["data"])

    loss_fn = torch.compile(model.loss) if cfg.compile else model.loss

    def save(step: int, tokens: int) -> Path:
        train_state = {"step": step, "tokens": tokens, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rng_state(device), "data": asdict(data.train.position)}
        return save_checkpoint(cfg.out, step, model.state_dict(), train_state)

    hooks = LoopHooks(to_device=lambda arr: torch.from_numpy(arr).to(device, non_blocking=True), mean=float,
                      clip=lambda: clip_gradients(graph, model), save=save)
    return run_steps(cfg, hooks, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, data=data, step=step,
                     tokens=tokens, model=model, amp=autocast_for(device))
