"""Session: a compiled model directory loaded in onnxruntime; one step on numpy arrays, and generate.

Batches of prompts of different lengths are left-padded; attention_mask marks real tokens and
position_ids = cumsum(mask) - 1 (clamped at 0). prefix-mask specs (GLM) get prefix_len = the
prompt's length: the prompt is the bidirectional prefix, generated tokens are causal. glm2d
position ids follow GLM (Du et al. 2022): prompt tokens get row 0 = their position and row 1 = 0;
the k-th generated token keeps row 0 at the last prompt position and gets block position row 1 = k.

How each step reaches onnxruntime (numpy feeds, IO binding, CUDA graphs) is archc.runner.steppers.
Greedy picks: a model with the next_token output (`archc compile --next-token argmax`, the default)
computes ArgMax of the last position's logits in the graph; greedy decoding reads those B int64 and
leaves the logits on the device (CUDA) instead of copying [batch, vocab] float32 to the host and
taking numpy's argmax. Sampling reads the logits as before (archc.runner.sampling).
Logits: generation reads the last position only. A model compiled with `--logits last` (metadata
archc.logits) gives [batch, 1, vocab] in every step; an `all` model has the input logits_start
(archc.model_dir.LOGITS_START, an overridable initializer, default 0 = every position), which generate
feeds -1 in every step, so its head too computes [batch, 1, vocab]. `forward` feeds it only when asked
(default: the contract's full logits, for scoring). A step that does compute full logits (forward, or
generate on an `all` model exported before logits_start) is refused (UserError) when they reach
FULL_LOGITS_LIMIT elements: onnxruntime's CUDA kernels index such a tensor with 32-bit offsets (the
likely cause of an illegal memory access on an H200 at [16, 2048, 256000], benchmarks/RESULTS.md). Tests
patch the limit here, where check_logits_size reads it (archc.runner.session.FULL_LOGITS_LIMIT).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from archc import feeds as feeds_
from archc.components import PositionIds
from archc.errors import UserError, one_line
from archc.files import stat_path
from archc.model_dir import (
    GENAI_CONFIG_FILE,
    LOGITS_START,
    META_KV_CACHE,
    META_LOGITS,
    META_LOWERING,
    META_POSITION_IDS,
    SPEC_FILE,
)
from archc.runner import steppers
from archc.runner.providers import _ort, open_session
from archc.runner.sampling import Sampler
from archc.runner.steppers import _BoundSteps, _CpuSteps

FULL_LOGITS_LIMIT = 2**31  # elements of a [batch, seq, vocab] logits output past 32-bit indexing


@dataclass
class GenerationResult:
    ids: list[list[int]]  # generated tokens only, one list per prompt
    prefill_ms: float  # the prompt step and picking the first new token (wall clock)
    decode_tokens_per_s: float  # new tokens after the first, summed over the batch, per second of decode
    decode_ms: float = 0.0
    device: str = "cpu"
    sequences: list[list[int]] = field(default_factory=list)  # prompt + generated



_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def position_layout(meta: dict, inputs: dict, where: str = "model.onnx") -> PositionIds:
    """The layout of the model's position_ids: the exporter's record (metadata archc.position_ids,
    the graph's PositionIds); a model exported before that record, from the input's rank
    ([batch, 2, seq] is GLM's 2-D layout). A record that names no PositionIds is one line."""
    recorded = meta.get(META_POSITION_IDS)
    if recorded is not None:
        try:
            return PositionIds(recorded)
        except ValueError:
            raise UserError(one_line(f"{where}: metadata {META_POSITION_IDS} = {recorded!r} is not one of "
                                     f"{', '.join(p.value for p in PositionIds)}; re-run `archc compile`")) from None
    if "position_ids" not in inputs:
        return PositionIds.none
    return PositionIds.glm2d if len(inputs["position_ids"].shape) == 3 else PositionIds.flat


class Session:
    """A compiled model directory loaded in onnxruntime."""

    def __init__(self, model_dir: str | Path, device: str = "auto", *, io_binding: bool | str | None = None,
                 cuda_graph: bool = True, cuda_options: dict | None = None, decode_window: int | None = None):
        """device: 'auto' | 'cuda' | 'cpu' (archc.runner.providers.open_session). The other switches exist for
        tests and benchmarks; `archc run` and the text commands leave them at their defaults:
        io_binding: None (default) binds IO on CUDA and feeds numpy on the CPU. True runs the IO-binding
            path (_BoundSteps) on the CPU with host buffers (tests; benchmarks/profile_ort.py).
            "static" also runs the fixed-buffer decode path that CUDA graphs capture, without capture, on
            any device (tests/runner/test_runner_static.py; the CPU dry runs of benchmarks/host_step.py and
            host_prefill.py).
        cuda_graph: False makes the CUDA session without enable_cuda_graph (the bench harness's ort-nograph
            backend, benchmarks/ab_decode.py).
        cuda_options: extra CUDA provider options, applied last (benchmarks/ab_decode.py's A/B runs).
        decode_window: greedy steps queued per host round trip on the fixed-buffer path (steppers._Window;
            None: steppers.DECODE_WINDOW); 1 runs the one-step loop (benchmarks/ab_decode.py's A/B runs)."""
        self.model_dir = Path(model_dir)
        self.io_binding = io_binding
        self.decode_window = steppers.DECODE_WINDOW if decode_window is None else decode_window
        if isinstance(self.decode_window, bool) or not isinstance(self.decode_window, int) or self.decode_window < 1:
            raise UserError(f"decode_window must be a whole number of at least 1 (got {decode_window!r})")
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
        ins = {i.name: i for i in self.sess.get_inputs()}  # required inputs (overridable initializers are not here)
        self.input_names = list(ins)
        # `all` models: the head's first position, fed -1 by generate (models before it, and --logits last, lack it)
        self.has_logits_start = LOGITS_START in {i.name for i in self.sess.get_overridable_initializers()}
        self.output_names = [o.name for o in self.sess.get_outputs()]
        # next_token (export option, default on): the greedy pick computed on the device; greedy decoding
        # reads it (8 bytes per row) instead of bringing [batch, vocab] float32 logits to the host
        self.has_next_token = "next_token" in self.output_names
        self.n_layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
        k0 = ins["past_key_values.0.key"]
        self.kv_heads, self.head_dim = int(k0.shape[1]), int(k0.shape[3])
        self.cache_type = k0.type
        self.vocab = int(self.sess.get_outputs()[0].shape[2])
        # the layout the graph gave the input (ComponentGraph.model.position_ids), as the exporter recorded it
        self.position_layout = position_layout(meta, ins, str(self.model_dir))
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

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past: dict | None = None,
                *, logits_start: int | None = None):
        """One call on numpy arrays. Returns (logits float32 as the model gives them: [B,S,V], or [B,1,V]
        for a model compiled with --logits last; present {name: array}).
        logits_start: fed to a model with that input (None: not fed, the model's default 0 = every
        position); -1 computes the last position only, k the positions k: (Python-style). A model
        without the input (--logits last, older exports) gives what it gives."""
        logits, present, _ = self._forward(input_ids, attention_mask, position_ids, prefix_len, past, logits_start)
        return logits, present

    def _forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past: dict | None = None,
                 logits_start: int | None = None):
        """forward(), plus the model's next_token [B] (None without that output)."""
        input_ids = np.asarray(input_ids, np.int64)
        B, S = input_ids.shape
        self.check_logits_size(B, S, logits_start)
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
        if logits_start is not None and self.has_logits_start:
            feeds[LOGITS_START] = np.array([logits_start], np.int64)
        outs = dict(zip(self.output_names, self.sess.run(None, feeds, self.run_options)))
        present = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
        nt = outs.get("next_token")
        return outs["logits"], present, None if nt is None else nt[:, 0]

    def default_positions(self, attention_mask: np.ndarray, seq: int) -> np.ndarray:
        return feeds_.positions(attention_mask, seq, self.position_layout)

    def logits_positions(self, seq: int, logits_start: int | None = None) -> int:
        """How many positions a step of `seq` tokens computes logits for, fed `logits_start` (None: not fed)."""
        if self.logits == "last":
            return 1
        if self.logits != "all":
            raise UserError(f"{self.model_dir}: model.onnx metadata {META_LOGITS} = {self.logits!r} is not all or last; "
                            "re-run `archc compile`")
        if logits_start is None or not self.has_logits_start:
            return seq
        return len(range(seq)[logits_start:])

    def check_logits_size(self, batch: int, seq: int, logits_start: int | None = None) -> None:
        """Refuse a step whose logits ([batch, positions computed, vocab]) reach FULL_LOGITS_LIMIT elements."""
        rows = self.logits_positions(seq, logits_start)
        n = batch * rows * self.vocab
        if n >= FULL_LOGITS_LIMIT:
            fix = ("re-run `archc compile` (generation in a model made now computes the last position only)"
                   if not self.has_logits_start else "feed logits_start=-1 (the last position only)")
            raise UserError(f"{self.model_dir}: logits [batch {batch}, seq {rows}, vocab {self.vocab}] = {n:,} float32 elements "
                            f"({n * 4 / 2**30:.1f} GiB) reach {FULL_LOGITS_LIMIT:,}, past onnxruntime's 32-bit "
                            f"indexing; {fix}, or use a smaller batch or prompt")

    # ---- generation ----------------------------------------------------------------------------
    def check_prompts(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        feeds_.check_prompts(prompts, max_new_tokens, self.vocab, self.max_seq_len)

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
        self.check_logits_size(B, L, steppers.GENERATE_LOGITS_START)  # read here per call: tests patch it there
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
        windowed = stepper.device_pick and getattr(stepper, "graph_id", None) is not None and self.decode_window > 1
        if not stop:
            n = (self._decode_windows(stepper, tok, out, masks, L, lens, on_token) if windowed
                 else self._decode_steps(stepper, pick, tok, out, masks, L, lens, on_token))
        decode_s = time.perf_counter() - t1
        n_decode = B * (n - 1)
        gen = out[:, :n].tolist()
        seqs = [ids[b, L - len(p):].tolist() + g for b, (p, g) in enumerate(zip(prompts, gen))]  # the prompt as left_pad stored it
        return GenerationResult(gen, prefill_ms, n_decode / decode_s if decode_s > 0 and n_decode else 0.0, decode_s * 1e3,
                                self.device, seqs)

    def _decode_steps(self, stepper, pick, tok: np.ndarray, out: np.ndarray, masks: np.ndarray, L: int, lens: np.ndarray,
                      on_token) -> int:
        """Decode of out[:, 1:] one step per host round trip (sampling, and models without a fixed-buffer path),
        after the prefill's token `tok`; stops after the token on_token accepts. Returns how many tokens there are."""
        n = 1
        for k in range(1, out.shape[1]):
            mask = masks[:, :L + k]
            tok = pick(stepper.step(tok[:, None], mask, self._positions(mask, 1, lens, k), lens))
            out[:, k] = tok
            n = k + 1
            if on_token is not None and on_token(tok):
                break
        return n

    def _decode_windows(self, st: _BoundSteps, tok: np.ndarray, out: np.ndarray, masks: np.ndarray, L: int,
                        lens: np.ndarray, on_token) -> int:
        """Greedy decode of out[:, 1:] in windows of decode_window steps (steppers._Window), after the
        prefill's token `tok`; stops after the token on_token accepts. Returns how many tokens there are."""
        n, k, max_new = 1, 1, out.shape[1]
        while k < max_new:
            w = min(self.decode_window, max_new - k)
            feeds = [self._step_feeds(masks[:, :L + k + i], lens, k + i) for i in range(w)]
            toks = st.window_of({name: np.shape(v) for name, v in feeds[0].items()}, self.decode_window).run(tok, feeds)
            for i in range(w):
                tok = toks[i]
                out[:, k + i] = tok
                n = k + i + 1
                if on_token is not None and on_token(tok):
                    return n
            k += w
        return n

    def _step_feeds(self, mask: np.ndarray, lens: np.ndarray, k: int) -> dict:
        """The feeds of the k-th generated token's step other than its ids (they come from the device)."""
        feeds = {"attention_mask": mask}
        if self.has_positions:
            feeds["position_ids"] = self._positions(mask, 1, lens, k)
        if self.has_prefix:
            feeds["prefix_len"] = lens
        return feeds

    def _static_stepper(self, batch: int, max_len: int) -> "_BoundSteps":
        """The fixed-buffer stepper of this shape, kept across generate calls: a captured graph replays
        into the buffers it was captured with. At most four shapes are kept (their graphs released)."""
        key = (batch, max_len)
        st = self._steppers.pop(key, None)
        if st is None:
            st = _BoundSteps(self, batch, max_len, self.device, graph_id=self._graph_ids + 1)
            self._graph_ids += 1 + self.decode_window  # the one-step graph, then the window's (steppers._Window)
            while len(self._steppers) >= 4:
                old = self._steppers.pop(next(iter(self._steppers)))
                if self.cuda_graph:
                    self.sess.release_captured_graph(old.graph_id)
                    for gid in sorted(old.window.captured if old.window is not None else ()):
                        self.sess.release_captured_graph(gid)
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
