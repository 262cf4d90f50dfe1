"""Run a compiled model directory in onnxruntime: provider choice, prefill + cached decode, sampling.

    from archc.runner import Session
    s = Session("out/llama", device="auto")            # 'auto' | 'cuda' | 'cpu'
    r = s.generate([[1, 2, 3], [4, 5]], max_new_tokens=16, top_k=50, top_p=0.9, temperature=0.8, seed=0)
    r.ids, r.prefill_ms, r.decode_tokens_per_s
    logits, present = s.forward(input_ids, attention_mask, past=None)   # one step, numpy in and out

Batches of prompts of different lengths are left-padded; attention_mask marks real tokens and
position_ids = cumsum(mask) - 1 (clamped at 0). prefix-mask specs (GLM) get prefix_len = the
prompt's length: the prompt is the bidirectional prefix, generated tokens are causal. glm2d
position ids follow GLM (Du et al. 2022): prompt tokens get row 0 = their position and row 1 = 0;
the k-th generated token keeps row 0 at the last prompt position and gets block position row 1 = k.

CPU: numpy feeds; the cache grows by concatenation inside the model (present = past + new).
CUDA: IO binding. Models whose attention is all GroupQueryAttention (cuda target, fp16/bf16) get one
max-length cache per layer on the device, bound as both past and present (the op writes the new
tokens in place); other models keep their present OrtValues on the device and bind them as the
next step's past. Per token, only the attention mask / ids / positions go up (a few bytes per row)
and the last position's logits come down for sampling.
CUDA graphs (shared-cache models on CUDA): the session is made with the CUDA provider's
enable_cuda_graph, and each decode step runs on fixed device buffers bound once per (batch, max_len):
ids, positions, and an attention_mask of the full max_len width whose columns past the current
length are 0. For these models that is the same computation (GroupQueryAttention reads each row's
length from sum(mask) - 1; total_sequence_length = the mask width = the buffer length), and every
bound shape stays fixed, so onnxruntime captures the step once (gpu_graph_id per shape) and replays
it. Prefill and every other run pass gpu_graph_id = -1 (no capture). On CUDA the prefill's logits
stay on the device and only the last position comes to the host (a one-node Slice session), so a
long prompt does not copy [batch, seq, vocab] float32 over PCIe.
Greedy picks: a model with the next_token output (`archc compile --next-token argmax`, the default)
computes ArgMax of the last position's logits in the graph; greedy decoding reads those B int64 and
leaves the logits on the device (CUDA) instead of copying [batch, vocab] float32 to the host and
taking numpy's argmax. Sampling reads the logits as before.
Logits: a model compiled with `--logits last` (metadata archc.logits) gives [batch, 1, vocab] in every
step, which is all generation reads. A model with the contract's full logits refuses (UserError) a
prefill whose logits reach FULL_LOGITS_LIMIT elements instead of running it: onnxruntime's CUDA
kernels index such a tensor with 32-bit offsets (the likely cause of an illegal memory access on an H200 at
[16, 2048, 256000], benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import stat
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from archc import feeds as feeds_
from archc.components import PositionIds
from archc.dtypes import DType
from archc.errors import UserError, one_line
from archc.files import kind_of, stat_path
from archc.model_dir import GENAI_CONFIG_FILE, META_DTYPE, META_KV_CACHE, META_LOGITS, META_LOWERING, MODEL_FILE, SPEC_FILE
ORT_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's own default for its process-wide logger (warning)
FULL_LOGITS_LIMIT = 2**31  # elements of a [batch, seq, vocab] logits output past 32-bit indexing
# CUDA provider's sdpa_kernel for models whose attention is MultiHeadAttention / ONNX Attention (concatenated
# cache): flash (1) | memory-efficient (2) | unfused (16), without cuDNN flash attention (8), which plans
# its kernel for every new sequence length: BLOOM-1.3B's first 128-token generate took 12.5 s with it and
# 0.88 s without, and steady decode 3.59 -> 3.34 ms/token (H200, benchmarks/RESULTS.md, optimisation log).
CONCAT_CACHE_SDPA_KERNEL = 1 | 2 | 16


@dataclass
class GenerationResult:
    ids: list[list[int]]  # generated tokens only, one list per prompt
    prefill_ms: float  # the prompt step and picking the first new token (wall clock)
    decode_tokens_per_s: float  # new tokens after the first, summed over the batch, per second of decode
    decode_ms: float = 0.0
    device: str = "cpu"
    sequences: list[list[int]] = field(default_factory=list)  # prompt + generated


def _ort():
    import onnxruntime as ort

    return ort


def choose_providers(device: str) -> tuple[list, str | None]:
    """(providers, note): CUDA only when asked for or when 'auto' and the CUDA EP is compiled in."""
    ort = _ort()
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device {device}: choose auto, cuda or cpu")
    if device == "cpu":
        return ["CPUExecutionProvider"], None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = "this onnxruntime build has no CUDAExecutionProvider"
        if device == "cuda":
            raise UserError(f"--device cuda: {reason}; install onnxruntime-gpu or use --device cpu")
        return ["CPUExecutionProvider"], f"cuda unavailable ({reason}); running on CPU"
    reason = cuda_library_problem()
    if reason:
        if device == "cuda":
            raise UserError(f"--device cuda: the CUDA execution provider cannot load ({reason}); use --device cpu")
        return ["CPUExecutionProvider"], f"cuda unavailable ({reason}); running on CPU"
    return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], None


def cuda_library_problem() -> str | None:
    """Why onnxruntime's CUDA provider library would fail to load (None: it loads). Loading it with
    ctypes first gives the reason in one line instead of onnxruntime's logged error pages."""
    import ctypes
    import os

    capi = Path(_ort().__file__).parent / "capi"
    lib = capi / "libonnxruntime_providers_cuda.so"
    if os.name != "posix" or not lib.exists():
        return None  # let onnxruntime decide (Windows DLLs, unusual layouts)
    try:
        shared = capi / "libonnxruntime_providers_shared.so"
        if shared.exists():
            ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(lib))
    except OSError as e:
        return str(e).strip()[:200]
    return None


def _session(path: Path, providers: list, quiet: bool = True, profile_prefix: str | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3 if quiet else 2
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # provider-load failures log at error level on the process-wide logger; onnxruntime has no getter
    # for its level, so it goes back to onnxruntime's own default (warning) rather than staying silenced
    ort.set_default_logger_severity(4 if quiet else ORT_DEFAULT_LOG_SEVERITY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ort.InferenceSession(str(path), so, providers=providers)
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def node_placement(model_dir: str | Path, device: str = "cuda") -> dict[str, tuple[str, str]]:
    """{ONNX node name: (op type, execution provider that ran it)} for one small prefill + decode step, read from
    onnxruntime's profile (the nodes after graph optimisation: fused nodes under their new names)."""
    import tempfile

    s = Session(model_dir, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        providers = [p for p in s.sess.get_providers()]
        path = Path(model_dir) / MODEL_FILE if Path(model_dir).is_dir() else Path(model_dir)
        s.sess = _session(path, providers, profile_prefix=str(Path(tmp) / "archc"))
        s.generate([[0, 1, 2]], 2)
        prof = s.sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    out: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and "provider" in e.get("args", {}):
            name = e["name"].removesuffix("_kernel_time").removesuffix("_fence_before").removesuffix("_fence_after")
            out[name] = (e["args"].get("op_name", "?"), e["args"]["provider"])
    return out


def open_session(model_dir: str | Path, device: str = "auto", cuda_graph: bool = True, cuda_options: dict | None = None):
    """(InferenceSession, device actually used, note or None). Bad model files -> UserError.
    cuda_graph: for shared-cache (all-GroupQueryAttention) models on CUDA, make the session with the
    provider's enable_cuda_graph (decode steps are captured and replayed); if onnxruntime refuses it,
    the session is made without. cuda_options: extra CUDA provider options (benchmarks' A/B runs)."""
    d = Path(model_dir)
    path = d / MODEL_FILE if d.is_dir() else d
    if not d.is_dir() and d.suffix.lower() in (".yaml", ".yml"):
        raise UserError(f"{model_dir}: this is a spec, not a compiled model; compile it first: "
                        f"`archc compile {model_dir} -o DIR`, then `archc run DIR`")
    if stat_path(path, str(path)) is None:
        raise UserError(f"{model_dir}: no {MODEL_FILE} here; make one with `archc compile SPEC -o {model_dir}`")
    for f in (path, path.parent / (path.name + ".data")):  # a FIFO would make onnx or onnxruntime wait forever
        st = stat_path(f, str(f))
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UserError(f"{f}: is {kind_of(st.st_mode)}, not a model file; re-run `archc compile`")
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-run `archc compile`") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    del proto
    providers, note = choose_providers(device)
    if providers[0] != "CPUExecutionProvider":
        opts = dict(providers[0][1])
        if meta.get(META_KV_CACHE, "concat") != "shared":
            opts["sdpa_kernel"] = str(CONCAT_CACHE_SDPA_KERNEL)
        opts.update({k: str(v) for k, v in (cuda_options or {}).items()})
        providers = [("CUDAExecutionProvider", opts)] + providers[1:]
    if meta.get(META_DTYPE) == DType.bfloat16.short and providers[0] == "CPUExecutionProvider":
        # the note says "...; running on CPU", which is not what happens here: nothing runs
        why = f", and CUDA is not usable here: {note.removesuffix('; running on CPU')}" if note else " (--device cpu)"
        raise UserError(f"{path}: a bf16 model runs on CUDA only (onnxruntime's CPU kernels lack bfloat16){why}; "
                        "compile with --dtype fp32 or fp16 to run it on the CPU")
    sess = None
    if cuda_graph and meta.get(META_KV_CACHE) == "shared" and providers[0] != "CPUExecutionProvider":
        try:
            sess = _session(path, [("CUDAExecutionProvider", {**providers[0][1], "enable_cuda_graph": "1"})] + providers[1:])
        except Exception:  # noqa: BLE001 - fall back to the plain session below, which reports real errors
            sess = None
    try:
        sess = sess or _session(path, providers)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:200]
        if providers[0] != "CPUExecutionProvider" and device == "auto":
            note = f"cuda unavailable ({msg}); running on CPU"
            try:
                sess = _session(path, ["CPUExecutionProvider"])
            except Exception as e2:  # noqa: BLE001
                raise UserError(f"{path}: onnxruntime cannot load the model ({str(e2).splitlines()[0][:200]})") from None
        elif "CUDA" in msg and device == "cuda":
            raise UserError(f"--device cuda: {msg}") from None
        elif "NOT_IMPLEMENTED" in msg:
            raise UserError(f"{path}: onnxruntime on {used_name(providers)} has no kernel for a node ({msg})") from None
        else:
            raise UserError(f"{path}: onnxruntime cannot load the model ({msg}); the file may be truncated, re-run `archc compile`") from None
    used = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    if providers[0] != "CPUExecutionProvider" and used == "cpu":
        if device == "cuda":
            raise UserError("--device cuda: onnxruntime could not start the CUDA execution provider "
                            "(CUDA/cuDNN libraries missing?); use --device cpu")
        note = note or "cuda unavailable (the CUDA execution provider failed to start); running on CPU"
    return sess, used, note


def used_name(providers: list) -> str:
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    return "CUDA" if first.startswith("CUDA") else "CPU"


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Session:
    """A compiled model directory loaded in onnxruntime."""

    def __init__(self, model_dir: str | Path, device: str = "auto", *, io_binding: bool | str | None = None,
                 cuda_graph: bool = True, cuda_options: dict | None = None):
        """io_binding: default on for CUDA; True on the CPU runs the device path with host buffers (tests)."""
        self.model_dir = Path(model_dir)
        self.io_binding = io_binding
        self.sess, self.device, self.note = open_session(model_dir, device, cuda_graph=cuda_graph, cuda_options=cuda_options)
        cuda_opts = self.sess.get_provider_options().get("CUDAExecutionProvider", {})
        self.cuda_graph = self.device == "cuda" and cuda_opts.get("enable_cuda_graph") == "1"
        self.run_options = None  # every run that is not a captured decode step
        if self.cuda_graph:
            self.run_options = _ort().RunOptions()
            self.run_options.add_run_config_entry("gpu_graph_id", "-1")
        self._steppers: dict = {}  # (batch, max_len) -> fixed-buffer stepper (graph mode), most recent last
        self._graph_ids = 0
        self._slicer = None
        meta = self.sess.get_modelmeta().custom_metadata_map
        self.lowering = json.loads(meta.get(META_LOWERING, "{}"))
        self.kv_cache = meta.get(META_KV_CACHE, "concat")
        self.logits = meta.get(META_LOGITS, "all")  # "last": logits [B, 1, V] (models before the option: all)
        ins = {i.name: i for i in self.sess.get_inputs()}
        self.input_names = list(ins)
        self.output_names = [o.name for o in self.sess.get_outputs()]
        # next_token (export option, default on): the greedy pick computed on the device; greedy decoding
        # reads it (8 bytes per row) instead of bringing [batch, vocab] float32 logits to the host
        self.has_next_token = "next_token" in self.output_names
        self.n_layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
        k0 = ins["past_key_values.0.key"]
        self.kv_heads, self.head_dim = int(k0.shape[1]), int(k0.shape[3])
        self.cache_type = k0.type
        self.vocab = int(self.sess.get_outputs()[0].shape[2])
        # the layout the graph gave the input (ComponentGraph.model.position_ids), as the model declares
        # it: the rank of position_ids (the exported bytes carry no separate record of it)
        self.position_layout = (PositionIds.none if "position_ids" not in ins else
                                PositionIds.glm2d if len(ins["position_ids"].shape) == 3 else PositionIds.flat)
        self.has_positions = self.position_layout is not PositionIds.none
        self.has_prefix = "prefix_len" in ins
        self.max_seq_len = self._context_length()

    def _context_length(self) -> int:
        """The longest sequence the model takes, known before anything is allocated: max_seq_len of the
        spec.yaml the exporter wrote beside the model (a learned position table has exactly that many
        rows past its offset); genai_config.json, which a user may edit, can only lower it. A damaged
        genai_config.json is one line, not a traceback."""
        from archc.files import read_json
        from archc.loader import read_yaml

        limits = []
        folder = self.model_dir if self.model_dir.is_dir() else self.model_dir.parent
        spec = folder / SPEC_FILE
        if stat_path(spec) is not None:
            try:
                n = read_yaml(spec)[0].get("max_seq_len")
            except UserError:
                n = None  # a damaged spec.yaml does not stop a model that runs; the model's own limits apply
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                limits.append(n)
        cfg = folder / GENAI_CONFIG_FILE
        if stat_path(cfg) is not None:
            data = read_json(cfg, limit=16 * 2**20)
            n = data.get("model", {}).get("context_length") if isinstance(data, dict) and isinstance(data.get("model"), dict) else None
            if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
                raise UserError(one_line(f"{cfg}: model.context_length must be a positive integer (got {json.dumps(n)[:40]}); "
                                         "fix it or delete genai_config.json"))
            limits.append(n)
        return min(limits) if limits else 1 << 30

    # ---- one step ------------------------------------------------------------------------------
    def _empty_past(self, batch: int) -> dict:
        if self.cache_type == "tensor(bfloat16)":
            raise UserError("bf16 models run on CUDA only (onnxruntime's CPU kernels have no bfloat16); use --device cuda")
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), _NP[self.cache_type])
        return {f"past_key_values.{i}.{kv}": z for i in range(self.n_layers) for kv in ("key", "value")}

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past: dict | None = None):
        """One call on numpy arrays. Returns (logits float32 as the model gives them: [B,S,V], or [B,1,V]
        for a model compiled with --logits last; present {name: array})."""
        logits, present, _ = self._forward(input_ids, attention_mask, position_ids, prefix_len, past)
        return logits, present

    def _forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past: dict | None = None):
        """forward(), plus the model's next_token [B] (None without that output)."""
        input_ids = np.asarray(input_ids, np.int64)
        B, S = input_ids.shape
        self.check_logits_size(B, S)
        past = past if past is not None else self._empty_past(B)
        P = next(iter(past.values())).shape[2]
        if attention_mask is None:
            attention_mask = np.ones((B, P + S), np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": np.ascontiguousarray(attention_mask, np.int64)}
        if self.has_positions:
            feeds["position_ids"] = position_ids if position_ids is not None else self.default_positions(feeds["attention_mask"], S)
        if self.has_prefix:
            feeds["prefix_len"] = np.asarray(prefix_len if prefix_len is not None else np.zeros(B), np.int64)
        for name, v in past.items():
            feeds[name.replace("present.", "past_key_values.")] = v
        outs = dict(zip(self.output_names, self.sess.run(None, feeds, self.run_options)))
        present = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
        nt = outs.get("next_token")
        return outs["logits"], present, None if nt is None else nt[:, 0]

    def default_positions(self, attention_mask: np.ndarray, seq: int) -> np.ndarray:
        return feeds_.positions(attention_mask, seq, self.position_layout)

    def check_logits_size(self, batch: int, seq: int) -> None:
        """Refuse a step whose full [batch, seq, vocab] logits reach FULL_LOGITS_LIMIT elements."""
        n = batch * seq * self.vocab
        if self.logits == "all" and n >= FULL_LOGITS_LIMIT:
            raise UserError(f"{self.model_dir}: logits [batch {batch}, seq {seq}, vocab {self.vocab}] = {n:,} float32 elements "
                            f"({n * 4 / 2**30:.1f} GiB) reach {FULL_LOGITS_LIMIT:,}, past onnxruntime's 32-bit "
                            f"indexing; recompile with `archc compile ... --logits last`, or use a smaller batch or prompt")

    # ---- generation ----------------------------------------------------------------------------
    def check_prompts(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("--prompt-ids: every prompt needs at least one token id")
        for p in prompts:
            a = np.asarray(p)  # integer prompts are checked in numpy (a Python loop took ~1 ms at 16 x 512 ids)
            if a.ndim == 1 and a.dtype.kind in "iu" and 0 <= a.min() and a.max() < self.vocab:
                continue
            bad = [t for t in p if not 0 <= int(t) < self.vocab]
            if bad:
                raise UserError(f"--prompt-ids: id {bad[0]} is outside the vocabulary [0, {self.vocab}); use ids below {self.vocab}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_seq_len:
            raise UserError(f"--prompt-ids: prompt of {longest} tokens + --max-new-tokens {max_new_tokens} exceeds the "
                            f"spec's max_seq_len {self.max_seq_len}; shorten the prompt or generate fewer tokens")
        if max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")

    def generate(self, prompts: list[list[int]], max_new_tokens: int = 16, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, greedy: bool | None = None, seed: int = 0,
                 on_token: Callable[[np.ndarray], bool] | None = None) -> GenerationResult:
        """Greedy unless top_k / top_p / temperature != 1 ask for sampling (or greedy=True forces it).
        on_token(tokens [B]) runs after each new token; when it returns True generation stops there
        (archc.text stops at eos ids this way) and every row's ids end at that token."""
        self.check_prompts(prompts, max_new_tokens)
        asked = top_k is not None or top_p is not None or temperature != 1.0
        sample = (not greedy) and (asked or greedy is False)
        sampler = Sampler(temperature, top_k, top_p, seed) if sample else None
        B, L = len(prompts), max(len(p) for p in prompts)
        self.check_logits_size(B, L)
        ids, mask, lens = feeds_.left_pad(prompts)
        if self.cuda_graph or self.io_binding == "static":
            stepper = self._static_stepper(B, L + max_new_tokens)
        elif self.device == "cuda" or self.io_binding:
            stepper = _BoundSteps(self, B, L + max_new_tokens, self.device)
        else:
            stepper = _CpuSteps(self, B)
        # greedy with a next_token output: the steps return the device's pick instead of the logits
        stepper.device_pick = sampler is None and self.has_next_token
        pick = (lambda x: x) if stepper.device_pick else (lambda x: self._pick(x, sampler))
        out = np.zeros((B, max_new_tokens), np.int64)
        # the mask of every step is a view of one preallocated array (no concatenation per token)
        masks = np.concatenate([mask, np.ones((B, max_new_tokens), np.int64)], 1)
        t0 = time.perf_counter()
        tok = pick(stepper.step(ids, mask, self._positions(mask, L, lens, 0), lens))
        prefill_ms = (time.perf_counter() - t0) * 1e3
        out[:, 0] = tok
        n = 1  # tokens generated
        stop = on_token is not None and on_token(tok)
        t1 = time.perf_counter()
        for k in range(1, max_new_tokens):
            if stop:
                break
            mask = masks[:, :L + k]
            tok = pick(stepper.step(tok[:, None], mask, self._positions(mask, 1, lens, k), lens))
            out[:, k] = tok
            n = k + 1
            stop = on_token is not None and on_token(tok)
        decode_s = time.perf_counter() - t1
        n_decode = B * (n - 1)
        gen = out[:, :n].tolist()
        seqs = [ids[b, L - len(p):].tolist() + g for b, (p, g) in enumerate(zip(prompts, gen))]  # the prompt as left_pad stored it
        return GenerationResult(gen, prefill_ms, n_decode / decode_s if decode_s > 0 and n_decode else 0.0, decode_s * 1e3,
                                self.device, seqs)

    def _static_stepper(self, batch: int, max_len: int) -> "_BoundSteps":
        """The fixed-buffer stepper of this shape, kept across generate calls: a captured graph replays
        into the buffers it was captured with. At most four shapes are kept (their graphs released)."""
        key = (batch, max_len)
        st = self._steppers.pop(key, None)
        if st is None:
            self._graph_ids += 1
            st = _BoundSteps(self, batch, max_len, self.device, graph_id=self._graph_ids)
            while len(self._steppers) >= 4:
                old = self._steppers.pop(next(iter(self._steppers)))
                if self.cuda_graph:
                    self.sess.release_captured_graph(old.graph_id)
        self._steppers[key] = st
        return st

    def last_position(self, logits) -> np.ndarray:
        """logits[:, -1:, :] of a device OrtValue, sliced on the device: only [B, 1, V] crosses to the host."""
        ort = _ort()
        if self._slicer is None:
            from onnx import TensorProto, helper

            c = lambda n, v: helper.make_tensor(n, TensorProto.INT64, [1], [v])  # noqa: E731
            graph = helper.make_graph(
                [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])], "last_position",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", "v"])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, "v"])],
                [c("starts", -1), c("ends", 1 << 62), c("axes", 1)])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
            self._slicer = ort.InferenceSession(model.SerializeToString(), providers=list(dict.fromkeys(self.sess.get_providers()[:1] + ["CPUExecutionProvider"])))
        io = self._slicer.io_binding()
        io.bind_ortvalue_input("x", logits)
        io.bind_output("y", "cpu")
        self._slicer.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()

    def _positions(self, mask: np.ndarray, seq: int, lens: np.ndarray, k: int) -> np.ndarray | None:
        return feeds_.positions(mask, seq, self.position_layout, lens, k)

    @staticmethod
    def _pick(logits: np.ndarray, sampler) -> np.ndarray:
        last = logits[:, -1, :]
        return last.argmax(-1).astype(np.int64) if sampler is None else sampler(last)


class Sampler:
    """Temperature, then top-k, then top-p (nucleus, Holtzman et al. 2020), from a seeded numpy Generator."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0):
        if not (math.isfinite(temperature) and temperature > 0):  # nan passes `<= 0`
            raise UserError(f"--temperature {temperature}: must be a finite number > 0 (omit the sampling options for greedy decoding)")
        if top_k is not None and top_k < 1:
            raise UserError("--top-k must be >= 1")
        if top_p is not None and not 0 < top_p <= 1:
            raise UserError("--top-p must be in (0, 1]")
        self.t, self.k, self.p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        out = np.empty(len(logits), np.int64)
        for b, row in enumerate(logits.astype(np.float64) / self.t):
            order = np.argsort(-row, kind="stable")
            z = row[order]
            if self.k is not None:
                z = z[: self.k]
            prob = np.exp(z - z.max())
            prob /= prob.sum()
            if self.p is not None:
                keep = np.searchsorted(np.cumsum(prob), self.p) + 1  # smallest prefix with mass >= p
                prob = prob[:keep] / prob[:keep].sum()
            out[b] = order[self.rng.choice(len(prob), p=prob)]
        return out


class _CpuSteps:
    """Host numpy feeds; present becomes the next past. step() returns the logits, or the model's
    next_token [B] when device_pick is set (Session.generate sets it)."""

    device_pick = False

    def __init__(self, s: Session, batch: int):
        self.s, self.past = s, s._empty_past(batch)

    def step(self, ids, mask, positions, lens):
        logits, self.past, next_token = self.s._forward(ids, mask, positions, lens if self.s.has_prefix else None, self.past)
        return next_token if self.device_pick else logits


class _BoundSteps:
    """IO binding on `device` ('cuda'; 'cpu' in tests). Shared cache (GroupQueryAttention models): past
    and present are one preallocated [B, kv_heads, max_len, head_dim] buffer per layer and tensor,
    which the op updates in place. Otherwise the present OrtValues stay where they were made and are
    bound as the next step's past.

    With graph_id (shared cache only: Session.cuda_graph, or io_binding="static" to run the same path
    without capture in tests), decode steps run on fixed buffers bound once: ids, positions, prefix_len
    and a max_len-wide attention_mask (0 past the current length) are updated in place, logits land in
    a fixed [B, 1, V] buffer, and the run carries gpu_graph_id = graph_id, so onnxruntime captures the
    step once and replays it. Prefill runs with gpu_graph_id = -1.
    step() returns the logits (host numpy), or with device_pick the model's next_token [B]: then the
    logits stay on the device and only B int64 cross to the host."""

    device_pick = False

    ELEM = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(bfloat16)": 16}  # onnx.TensorProto
    INT64, FLOAT = 7, 1

    def __init__(self, s: Session, batch: int, max_len: int, device: str, graph_id: int | None = None):
        ort = _ort()
        self.s, self.ort, self.dev = s, ort, device
        self.shared = s.kv_cache == "shared"
        self.batch, self.max_len = batch, max_len
        self.graph_id = graph_id if self.shared else None
        length = max_len if self.shared else 0
        shape = [batch, s.kv_heads, length, s.head_dim]
        self.cache = {f"past_key_values.{i}.{kv}": ort.OrtValue.ortvalue_from_shape_and_type(shape, self.ELEM[s.cache_type], device, 0)
                      for i in range(s.n_layers) for kv in ("key", "value")}
        self.fixed = None  # decode buffers + binding, made at the first decode step
        # shared cache: one binding for the steps that are not fixed (the prefill), with the 2 x n_layers
        # cache buffers bound once as past and present; each step rebinds only its feeds and the
        # logits / next_token outputs (binding 88 buffers anew took ~0.4 ms of host time per prefill
        # on a 2-core VM, benchmarks/RESULTS.md, optimisation log)
        self.prefill_io = None
        self.prefill_feeds = None  # _PackedFeeds of the last prefill's shapes (shared cache), reused while they repeat

    def _cache_binding(self, on_device: bool):
        """(IOBinding with the feeds still to bind, names of its outputs in binding order). Outputs are
        bound logits, next_token, then the caches: get_outputs() lists them in that order."""
        s = self.s
        bound = ["logits"] + (["next_token"] if s.has_next_token else [])
        if self.shared and self.prefill_io is not None:
            io = self.prefill_io
            io.bind_output("logits", self.dev if on_device else "cpu", 0)  # replaces the previous step's binding
            return io, bound + [n.replace("past_key_values.", "present.") for n in self.cache]
        io = s.sess.io_binding()
        io.bind_output("logits", self.dev if on_device else "cpu", 0)
        if s.has_next_token:
            io.bind_output("next_token", "cpu")
        for n, v in self.cache.items():
            io.bind_ortvalue_input(n, v)
            out = n.replace("past_key_values.", "present.")
            if self.shared:
                io.bind_ortvalue_output(out, v)  # same buffer as the past: written in place
            else:
                io.bind_output(out, self.dev, 0)
            bound.append(out)
        if self.shared:
            self.prefill_io = io
        return io, bound

    def step(self, ids, mask, positions, lens):
        if self.graph_id is not None and ids.shape[1] == 1:
            return self._fixed_step(ids, mask, positions, lens)
        s, ort = self.s, self.ort
        # prefill: slice the last position on the device (a --logits last model gives only that one)
        on_device = self.dev == "cuda" and (self.device_pick or (ids.shape[1] > 1 and s.logits == "all"))
        io, bound = self._cache_binding(on_device)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if s.has_positions:
            feeds["position_ids"] = positions
        if s.has_prefix:
            feeds["prefix_len"] = lens
        if self.shared:
            # one packed device buffer per feed shape, kept while the shapes repeat: one host-to-device copy and no
            # device allocation per prefill (ortvalue_from_numpy on CUDA allocates outside onnxruntime's arena)
            shapes = {n: np.shape(v) for n, v in feeds.items()}
            if self.prefill_feeds is None or self.prefill_feeds.shapes != shapes:
                self.prefill_feeds = _PackedFeeds.make(ort, self.dev, shapes)
            self.prefill_feeds.bind(io, self.dev)  # a few pointers: cheaper than tracking which binding holds them
            self.prefill_feeds.update(feeds)
        else:
            for n, v in feeds.items():
                io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, np.int64), self.dev, 0))
        s.sess.run_with_iobinding(io, s.run_options)
        outs = dict(zip(bound, io.get_outputs()))
        if not self.shared:
            for n in self.cache:
                self.cache[n] = outs[n.replace("past_key_values.", "present.")]
        if self.device_pick:
            return outs["next_token"].numpy()[:, 0]
        return s.last_position(outs["logits"]) if on_device else outs["logits"].numpy()

    def _fixed_step(self, ids, mask, positions, lens):
        s = self.s
        feeds = {"input_ids": ids, "attention_mask": mask}
        if s.has_positions:
            feeds["position_ids"] = positions
        if s.has_prefix:
            feeds["prefix_len"] = lens
        if self.fixed is None:
            self.fixed = self._make_fixed({n: np.shape(v) for n, v in feeds.items()})
        f = self.fixed
        f.feeds.update(feeds)  # the mask is max_len wide: the step's columns, then 0 (see the class docstring)
        s.sess.run_with_iobinding(f.io, f.opts)
        return f.next_token.numpy()[:, 0] if self.device_pick else f.logits.numpy()

    def _make_fixed(self, shapes: dict) -> "_FixedBuffers":
        """The decode buffers of this shape, bound once: the int64 feeds packed into one device buffer
        (_PackedFeeds), the cache as past and present, logits and next_token."""
        s, ort = self.s, self.ort
        B = self.batch
        feeds = _PackedFeeds.make(ort, self.dev, dict(shapes, attention_mask=(B, self.max_len)))
        io = s.sess.io_binding()
        feeds.bind(io, self.dev)
        for name, v in self.cache.items():
            io.bind_ortvalue_input(name, v)
            io.bind_ortvalue_output(name.replace("past_key_values.", "present."), v)
        logits = ort.OrtValue.ortvalue_from_shape_and_type([B, 1, s.vocab], self.FLOAT, self.dev, 0)
        io.bind_ortvalue_output("logits", logits)
        next_token = None
        if s.has_next_token:
            next_token = ort.OrtValue.ortvalue_from_shape_and_type([B, 1], self.INT64, self.dev, 0)
            io.bind_ortvalue_output("next_token", next_token)
        opts = s.run_options
        if s.cuda_graph:
            opts = ort.RunOptions()
            opts.add_run_config_entry("gpu_graph_id", str(self.graph_id))
        return _FixedBuffers(feeds, logits, next_token, io, opts)


@dataclass
class _PackedFeeds:
    """A step's int64 feeds (ids, positions, attention mask, prefix_len) packed back to back in one host
    array and one device buffer, each feed bound by pointer at its offset: a step makes one
    host-to-device copy instead of one per feed (a copy costs ~15 us of host time on an H200 host,
    benchmarks/RESULTS.md). A feed narrower than its slot (the decode step's mask, bound max_len wide)
    is written left-aligned and padded with 0."""

    shapes: dict  # feed name -> its shape as the caller gave it
    host: np.ndarray  # int64, every feed back to back
    dev: object  # OrtValue holding `host` on the device
    slots: dict  # feed name -> (offset in elements, bound shape)

    @staticmethod
    def make(ort, device: str, shapes: dict) -> "_PackedFeeds":
        slots, n = {}, 0
        for name, shape in shapes.items():
            slots[name] = (n, tuple(int(d) for d in shape))
            n += math.prod(shape)
        host = np.zeros(n, np.int64)
        return _PackedFeeds(dict(shapes), host, ort.OrtValue.ortvalue_from_numpy(host, device, 0), slots)

    def bind(self, io, device: str) -> None:
        for name, (off, shape) in self.slots.items():
            io.bind_input(name, device, 0, np.int64, list(shape), self.dev.data_ptr() + off * self.host.itemsize)

    def view(self, name: str) -> np.ndarray:
        off, shape = self.slots[name]
        return self.host[off:off + math.prod(shape)].reshape(shape)

    def update(self, feeds: dict) -> None:
        """Write the feeds into the host array, then copy it to the device in one go."""
        for name, v in feeds.items():
            view = self.view(name)
            if view.ndim == 2 and v.shape[1] < view.shape[1]:
                view[:, :v.shape[1]] = v
                view[:, v.shape[1]:] = 0
            else:
                view[...] = v
        self.dev.update_inplace(self.host)


@dataclass
class _FixedBuffers:
    """One (batch, max_len) shape's decode buffers, bound once (Session.cuda_graph: what the graph captured)."""

    feeds: _PackedFeeds  # ids, positions, the max_len-wide mask, prefix_len
    logits: object  # OrtValue [B, 1, V]
    next_token: object | None  # OrtValue [B, 1] int64 (models with the next_token output)
    io: object  # the IOBinding
    opts: object  # RunOptions (gpu_graph_id of this shape under CUDA graphs)

    def view(self, name: str) -> np.ndarray:
        return self.feeds.view(name)

    def bound_shape(self, name: str) -> tuple:
        return self.feeds.slots[name][1]
