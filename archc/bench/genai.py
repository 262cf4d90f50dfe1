"""onnxruntime-genai as a backend of `archc bench` (`genai`, and `genai-graph` with CUDA graphs).

The peer a user would pick instead of archc for onnxruntime on a GPU (issue 14): genai's model
builder (`python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp16|int4 -e cuda|cpu`)
turns a Hugging Face directory into its own ONNX export, and its generator runs it. The bench gives
genai the same checkpoint archc compiles:
- `archc bench HF_DIR`: the directory as it is (config.json, safetensors, tokenizer.json; the builder
  needs a tokenizer). archc's `ort` backends export it as `archc compile HF_DIR` does.
- `archc bench SPEC`: the spec's seeded init written as a Hugging Face directory in the bench's work
  directory (`archc export-hf`, archc.hf.export, in the compute dtype), plus a placeholder tokenizer
  (write_placeholder_tokenizer: a word-level vocabulary "t<id>" covering every id, `<s>`/`</s>` as
  bos/eos). The tokenizer only satisfies the builder; the bench feeds token ids. This is the
  random-weights comparison: both engines read the same numbers.

genai runs in its own process (archc/bench/genai_worker.py) with the python that has it
(ARCHC_GENAI_PYTHON, else this one when it imports onnxruntime_genai): on the CPU its wheel lives in
its own venv (scripts/genai_env.sh), and on a GPU each engine keeps its own onnxruntime. The builder
runs as a subprocess of that python too. The worker times with the harness's method (its docstring).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from archc.errors import BackendFailure, UserError
from archc.quant import QuantKind, QuantMethod, QuantScheme, QuantSettings

GENAI_PYTHON_ENV = "ARCHC_GENAI_PYTHON"
BUILDER = "onnxruntime_genai.models.builder"
WORKER = Path(__file__).with_name("genai_worker.py")
REPLY = "@@archc-genai "  # genai_worker.REPLY (the worker imports nothing of archc)
PLACEHOLDER_SPECIALS = ("<unk>", "<s>", "</s>")
BUILD_TIMEOUT_S = 1800


def genai_python() -> str:
    """The python that runs genai's builder and generator; one line naming the fix when there is none."""
    env = os.environ.get(GENAI_PYTHON_ENV)
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise UserError(f"{GENAI_PYTHON_ENV}={env}: not an executable python; point it at the python of a venv "
                            "with onnxruntime-genai (`bash scripts/genai_env.sh` makes one and prints its path)")
        return env
    if importlib.util.find_spec("onnxruntime_genai") is not None:
        return sys.executable
    raise UserError(f"--backends genai: onnxruntime-genai is not installed in this python; set {GENAI_PYTHON_ENV} to a "
                    "python that has it (`bash scripts/genai_env.sh` makes one and prints its path)")


def check_hf_dir(d: Path) -> None:
    """An HF directory genai's builder can read: config.json and tokenizer.json (it saves the tokenizer)."""
    if not (d / "config.json").is_file():
        raise UserError(f"{d}: no config.json; genai's builder takes a Hugging Face model directory")
    if not (d / "tokenizer.json").is_file():
        raise UserError(f"{d}: no tokenizer.json, which genai's builder needs; copy the model's tokenizer in, or bench "
                        "the spec itself (`archc bench SPEC`), which writes its weights with a placeholder tokenizer")


def write_placeholder_tokenizer(out_dir: Path, vocab_size: int) -> list[str]:
    """A word-level tokenizer naming every id ("<unk>", "<s>", "</s>", then "t3", "t4", ...): what genai's
    builder needs beside random weights (it reads the bos/eos ids from it; genai wants them inside the
    vocabulary). Deterministic bytes."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from archc.text import save_tokenizer

    if vocab_size < len(PLACEHOLDER_SPECIALS):
        raise UserError(f"vocab_size {vocab_size}: a placeholder tokenizer needs at least {len(PLACEHOLDER_SPECIALS)} ids")
    vocab = {tok: i for i, tok in enumerate(PLACEHOLDER_SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(PLACEHOLDER_SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return save_tokenizer(tok, out_dir, bos_token="<s>", eos_token="</s>")


def seeded_hf_dir(graph, work_dir: Path, dtype: str) -> Path:
    """The spec's seeded init as a Hugging Face directory (export-hf) with a placeholder tokenizer, in
    work_dir under a name its spec and dtype fingerprint (archc.bench.workdir: another seed, another folder;
    a folder there that archc did not seal is refused, never replaced)."""
    from archc.bench.workdir import building, place, reusable, spec_parts
    from archc.dtypes import DType
    from archc.hf.export import export_hf, seeded_source

    parts = {**spec_parts(graph), "what": "seeded Hugging Face checkpoint", "dtype": dtype}
    out_dir = place(work_dir, "hf-seeded", parts)
    if not reusable(out_dir, parts):
        with building(out_dir, parts) as tmp:  # checkpoint and tokenizer sealed together, then renamed into place
            export_hf(graph, tmp, seeded_source(graph), dtype=DType.from_short(dtype).value)
            write_placeholder_tokenizer(tmp, graph.spec.vocab_size)
    return out_dir


GENAI_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what genai's builder takes for block_size (its --extra_options help)
GENAI_LM_HEAD = "/lm_head/MatMul"  # the head's MatMul node in genai's builder (its nodes_to_exclude example)


def builder_args(dtype: str, device: str, quant: QuantSettings | None) -> list[str]:
    """genai builder options for archc's --dtype/--quant*: the same precision, block size, scheme, accuracy
    level and head (archc keeps the head in --dtype unless --quant-head: genai's head is excluded from its
    quantization the same way, nodes_to_exclude). A setting genai's builder cannot express is one line,
    exit 2, rather than a comparison of two different quantizations: --quant-method search (genai's methods
    are round-to-nearest and k_quant, neither archc's search) and a block size genai does not take."""
    provider = {"cuda": "cuda", "cpu": "cpu"}[device]
    if quant is None or quant.kind is QuantKind.none:
        precision = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}[dtype]
        return ["-p", precision, "-e", provider]
    precision = {QuantKind.int4: "int4", QuantKind.int8: "int8"}[quant.kind]
    if quant.method is not QuantMethod.rtn:  # search: genai's methods are round-to-nearest (archc's rtn) and k_quant
        raise UserError(f"--quant-method {quant.method.value} with --backends genai: genai's builder has no such method (its "
                        "round-to-nearest is archc's rtn); use --quant-method rtn, or bench genai separately")
    if quant.block_size not in GENAI_BLOCK_SIZES:
        raise UserError(f"--quant-block-size {quant.block_size} with --backends genai: genai's builder takes "
                        f"{', '.join(map(str, GENAI_BLOCK_SIZES))}")
    symmetric = {QuantScheme.symmetric: "true", QuantScheme.asymmetric: "false"}[quant.scheme]
    extra = [f"block_size={quant.block_size}", f"is_symmetric={symmetric}",
             f"accuracy_level={quant.accuracy_level}"]  # 0 too: genai's own default is 4 on the CPU, archc's 0 (unset)
    if not quant.head:
        extra.append(f"nodes_to_exclude={GENAI_LM_HEAD}")
    return ["-p", precision, "-e", provider, "--extra_options", *extra]


def model_bytes(d: Path) -> int:
    """Bytes of the ONNX files (graph + external data) in a model directory: its size on disk."""
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and (p.name.endswith(".onnx") or ".onnx.data" in p.name
                                                                           or p.name.endswith(".onnx_data")))


@dataclass
class Build:
    model_dir: Path
    export_s: float | None
    model_bytes: int


def build(python: str, hf_dir: Path, work_dir: Path, args: list[str], log=print) -> Build:
    """genai's builder on hf_dir into work_dir, in a folder named by its precision, provider and a fingerprint
    of the checkpoint's files, the options and the python (archc.bench.workdir: reused only when archc made
    it from the same inputs), through a temporary sibling (a failed or stopped build leaves nothing). A
    failure is one line: the builder's last line of output."""
    from archc.bench.workdir import checkpoint_parts, place, reusable, seal

    parts = {"what": "genai build", "source": checkpoint_parts(hf_dir), "args": args, "python": python}
    out_dir = place(work_dir, "-".join(["genai", args[1], args[3]]), parts)  # args: -p PRECISION -e PROVIDER ...
    if reusable(out_dir, parts):  # built before: no time to report
        return Build(out_dir, None, model_bytes(out_dir))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [python, "-m", BUILDER, "-i", str(hf_dir), "-o", str(tmp), "-c", str(tmp / "cache"), *args]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
            lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
            raise UserError(f"genai builder failed on {hf_dir} ({' '.join(args)}): {lines[-1].strip()[:300] if lines else f'exit {proc.returncode}'}")
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        export_s = time.perf_counter() - t
        seal(tmp, parts)
        os.replace(tmp, out_dir)
    except subprocess.TimeoutExpired:
        raise UserError(f"genai builder on {hf_dir}: no result in {BUILD_TIMEOUT_S} s") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"  genai builder {' '.join(args)}: {export_s:.1f} s")
    return Build(out_dir, export_s, model_bytes(out_dir))


def worker_log(model_dir: Path, backend: str) -> Path:
    """Where a worker's stderr goes: inside the genai build folder the worker loads, which archc made and
    sealed (build; a folder it did not make is refused before this), so no file of the user's is replaced.
    It was --work-dir/genai.stderr, which overwrote a user's file of that name."""
    return Path(model_dir) / f"archc-{backend}.stderr"


class Worker:
    """genai_worker.py in its own process: one JSON request a line in, one REPLY line out; its stderr in
    `stderr_path` (worker_log), which the messages below name."""

    def __init__(self, python: str, stderr_path: Path):
        self._stderr = open(stderr_path, "w")
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                self._lines.put(json.loads(line[len(REPLY):]))
        self._lines.put(None)  # the worker ended

    def ask(self, req: dict, timeout_s: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it ended; the reader says so below
        try:
            reply = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"genai worker: no answer to {req['op']} in {timeout_s:.0f} s (stopped; its stderr: "
                               f"{self.stderr_path})") from None
        if reply is None:
            raise RuntimeError(f"genai worker ended (exit {self.proc.wait()}): {self._last_stderr()} (its stderr: "
                               f"{self.stderr_path})")
        if "error" in reply:  # the worker's "Type: first line" (genai_worker._first_line), shown as it is
            raise BackendFailure(reply["error"])
        return reply

    def _last_stderr(self) -> str:
        self._stderr.flush()
        lines = [x for x in self.stderr_path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1][:300] if lines else "no message"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
