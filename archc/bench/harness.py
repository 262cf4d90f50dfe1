"""`archc bench`: generation speed of one spec on several backends, beside the card's own limits.

Method (same for every backend, so the figures compare):
- Inputs: seeded random token ids in [1, vocab) and seeded weights (never zeros), equal-length
  prompts, greedy decoding of exactly N new tokens (no EOS stop).
- Timing: the device is synchronised before and after each call and a host clock read
  (onnxruntime runs on its own CUDA stream, so events on torch's stream would not see its work);
  the hardware limits are timed with CUDA events. Warm-up calls first, then the median of repeats.
- Prefill = time to the first token, a generate call with N=1 (prompt forward + first greedy pick).
  Time per output token = (T(N) - T(1)) / (N - 1): set-up and prefill cancel out.
- Limits, measured in the same process on the same card: copy bandwidth (device-to-device copy,
  bytes read + written) and GEMM rate (8192^3 matrix product in fp16 and bf16).
  Decode roofline: per step, bytes = weights read (every matrix, norm and bias; embedding rows
  and position rows are negligible) + KV cache read and written for the step's context, over the
  bandwidth (or FLOPs over the GEMM rate when larger). Prefill floor: the cost model's FLOPs for the
  prompt (all projections, causal attention P(P+1)/2 positions, the head on the last position only)
  over the GEMM rate.
- The head in the prefill: every backend computes the last position only, as generation reads nothing
  else: the ort export's runner feeds logits_start = -1 (archc.runner), the torch backend feeds its module's
  logits_start = -1 (PaLM's [16, 2048, 256000] float32 logits alone would be 33 GB), torch-compile's
  decoder and transformers' generate (logits_to_keep=1) do it themselves. The ort export is the
  contract's `--logits all` (benchmarks/RESULTS.md's figures before logits_start ran its head on every
  position) unless `ort_logits` (benchmarks/genai_compare.py's fp16-last) asks for `--logits last`; the
  JSON's `logits` says which.
- Peak memory: torch backends, the resident model plus the allocator's peak above what was held
  before the measured calls; onnxruntime (its own allocator), device memory in use after the runs
  minus before the session was made (the arena does not shrink, so this is its peak).

Backends: ort (archc's ONNX export, cuda target, through archc's runner), torch (archc's PyTorch
module, eager, simple greedy loop with its KV cache), torch-compile (the module's fast decode path,
exporters.torch_decode.Decoder: static cache, compiled step, CUDA graphs of several steps),
hf-eager / hf-sdpa (transformers generate with the same weights, archc.bench.hf) and hf-compile
(transformers' static cache, whose generate compiles the decode step with torch.compile),
genai / genai-graph (onnxruntime-genai's builder and generator on the same checkpoint, without and with
CUDA graphs, in its own process: archc.bench.genai).

A Hugging Face directory instead of a spec (`hf_dir`): the ort backends export its checkpoint (as
`archc compile HF_DIR`) and genai builds from it; the torch and hf backends (seeded init) are refused.
`quant`: the ort backends export with the --quant* settings (archc.quant), genai builds with the same bit
width, block size, scheme, accuracy level and head (archc.bench.genai.builder_args refuses what it cannot).
Exports, builds and the seeded checkpoint in `work_dir` are reused only when archc made them from the same
inputs (archc.bench.workdir: a fingerprint in the folder's name and its key file).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from archc.cost import cost
from archc.dtypes import SHORT_WORDS, DType
from archc.errors import BackendFailure, UserError
from archc.graph import ComponentGraph, ComponentKind, PositionIds

BACKENDS = ("ort", "ort-nograph", "torch", "torch-compile", "hf-eager", "hf-sdpa", "hf-compile", "genai", "genai-graph")
GENAI_BACKENDS = ("genai", "genai-graph")  # need onnxruntime-genai (archc.bench.genai), so not in `all`
ALIASES = {"hf": ("hf-eager", "hf-sdpa", "hf-compile"),
           "all": tuple(b for b in BACKENDS if b != "ort-nograph" and b not in GENAI_BACKENDS)}
CHECKPOINT_BACKENDS = ("ort", "ort-nograph", "genai", "genai-graph")  # those that run a Hugging Face directory's weights


def parse_backends(text: str) -> list[str]:
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        names = ALIASES.get(part, (part,))
        for n in names:
            if n not in BACKENDS:
                raise UserError(f"--backends: unknown backend '{part}'; choose from {', '.join(BACKENDS + tuple(ALIASES))}")
            if n not in out:
                out.append(n)
    if not out:
        raise UserError("--backends: name at least one backend")
    return out


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def wall(fn: Callable, device) -> tuple[float, object]:
    """Seconds that fn() takes with the device synchronised on both sides."""
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


# ------------------------------------------------------------------------------------------------
# The card's limits


def _event_median(fn: Callable, device, reps: int, warmup: int = 3) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if torch.device(device).type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            times.append(wall(fn, device)[0])
    return statistics.median(times)


def measure_limits(device="cuda", dtypes=("fp16", "bf16"), *, copy_bytes: int | None = None, gemm_n: int | None = None) -> dict:
    """Copy bandwidth (bytes/s, read + written) and matrix-multiply rate (FLOP/s per dtype), on random data."""
    import torch

    cuda = torch.device(device).type == "cuda"
    copy_bytes = copy_bytes or (2 << 30 if cuda else 64 << 20)
    gemm_n = gemm_n or (8192 if cuda else 512)
    g = torch.Generator(device=device).manual_seed(0)
    src = torch.rand(copy_bytes // 2, dtype=torch.float16, device=device, generator=g)
    dst = torch.empty_like(src)
    t = _event_median(lambda: dst.copy_(src), device, reps=20)
    out = {"copy_bytes_per_s": 2 * src.numel() * 2 / t, "copy_buffer_bytes": src.numel() * 2, "gemm_n": gemm_n, "gemm_flops_per_s": {}}
    del src, dst
    for name in dtypes:
        dt = DType.from_short(name).to_torch() if cuda or name == "fp32" else torch.float32  # CPU: fp32 only is meaningful
        a = torch.randn(gemm_n, gemm_n, dtype=dt, device=device, generator=g)
        b = torch.randn(gemm_n, gemm_n, dtype=dt, device=device, generator=g)
        t = _event_median(lambda: a @ b, device, reps=10)
        out["gemm_flops_per_s"][name] = 2 * gemm_n**3 / t
        del a, b
    if cuda:
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------
# What the hardware allows for this model


def decode_weight_bytes(graph: ComponentGraph, itemsize: int) -> int:
    """Bytes of weights one decode step reads: every attention, MLP, norm and head parameter (a tied
    head reads the embedding matrix once more as the head). Embedding and position-table look-ups
    read one row per sequence and are left out."""
    read = (ComponentKind.attention.value, ComponentKind.mlp.value, ComponentKind.norm.value, ComponentKind.head.value)
    n = 0
    for name in graph.nodes():
        d = graph.node(name)
        if d["kind"] in read:
            n += sum(math.prod(s) for s in d["params"].values())
            n += sum(math.prod(s) for s in d.get("tied_shapes", {}).values())
    return n * itemsize


@dataclass
class Shape:
    batch: int
    prompt_len: int
    new_tokens: int


def ort_parts(graph: ComponentGraph, target: str, dtype: str, logits: str, quant=None, hf_dir: Path | None = None,
              kernels: str = "onnxruntime") -> dict:
    """Everything that decides the ort export's bytes (archc.bench.workdir: its fingerprint names the folder).
    kernels (compile --kernels) joins the parts only when it is not the default, so earlier folders keep their key."""
    from archc.bench.workdir import checkpoint_parts, spec_parts

    parts = {**spec_parts(graph), "what": "archc ONNX export", "target": target, "dtype": dtype, "logits": logits,
             "quant": quant.to_json() if quant is not None and quant.active else None,
             "weights": checkpoint_parts(hf_dir) if hf_dir is not None else "the spec's seeded init"}
    if kernels != "onnxruntime":  # with the op library the folder will hold: an edited kernel is another export
        from archc.bench.workdir import ort_ops_digest

        parts["kernels"] = kernels
        parts["ort_ops"] = ort_ops_digest()
    return parts


def ort_model_dir(work_dir: Path, graph: ComponentGraph, target: str, dtype: str, logits: str, quant=None,
                  hf_dir: Path | None = None, kernels: str = "onnxruntime") -> Path:
    """Where the ort backend keeps (and looks for) its export: what it is, then its fingerprint's digits."""
    from archc.bench.workdir import place

    return place(work_dir, _ort_stem(graph, target, dtype, logits, quant, kernels),
                 ort_parts(graph, target, dtype, logits, quant, hf_dir, kernels))


def _ort_stem(graph: ComponentGraph, target: str, dtype: str, logits: str, quant, kernels: str = "onnxruntime") -> str:
    q = f"-{quant.short().replace(' ', '-').replace('+', '')}" if quant is not None and quant.active else ""
    from archc.bench.workdir import MAX_NAME, folder_stem

    return (f"{folder_stem(graph.spec.name, MAX_NAME)}-{target}-{dtype}{q}" + ("-logits-last" if logits == "last" else "")
            + ("" if kernels == "onnxruntime" else f"-kernels-{kernels}"))


def ort_export(work_dir: Path, graph: ComponentGraph, target: str, dtype: str, logits: str, quant=None,
               hf_dir: Path | None = None, log: Callable[[str], None] = print,
               kernels: str = "onnxruntime") -> tuple[Path, float | None]:
    """The ort export in work_dir, made unless archc made it before from the same inputs (archc.bench.workdir):
    (its folder, seconds the export took, None when reused). A runner can call it ahead of the bench."""
    from archc.bench.workdir import building, place, reusable
    from exporters.onnx_export import export

    parts = ort_parts(graph, target, dtype, logits, quant, hf_dir, kernels)
    model_dir = place(work_dir, _ort_stem(graph, target, dtype, logits, quant, kernels), parts)
    if reusable(model_dir, parts):
        return model_dir, None
    weights = str(hf_dir) if hf_dir is not None else None
    with building(model_dir, parts) as tmp:  # sealed, then renamed into place: a stopped export leaves nothing
        t, _ = wall(lambda: export(graph, tmp, target=target, dtype=dtype, logits=logits, weights=weights, quant=quant,
                                 kernels=kernels), "cpu")
    log(f"  exported {model_dir.name} in {t:.1f} s")
    return model_dir, t


def roofline(graph: ComponentGraph, dtype: str, shape: Shape, limits: dict) -> dict:
    c = cost(graph)
    bw, rate = limits["copy_bytes_per_s"], limits["gemm_flops_per_s"][dtype]
    B, P, N = shape.batch, shape.prompt_len, shape.new_tokens
    w = decode_weight_bytes(graph, DType.from_short(dtype).itemsize)
    kv = c.kv_bytes_per_token(DType.from_short(dtype))
    # decode step j (1..N-1) runs the token at position P+j-1 against a context of P+j tokens
    steps = []
    for j in range(1, max(N, 2)):
        ctx = P + j
        steps.append(max((w + B * kv * ctx) / bw, B * c.flops_per_token(ctx) / rate))
    tpot = sum(steps) / len(steps)
    prefill_flops = B * (2 * c.matmul_params * P + c.attention_flops_per_position * P * (P + 1) // 2)
    # the head runs on one position per row (see the module docstring), not the P that matmul_params counts
    prefill_flops -= B * 2 * graph.spec.d_model * graph.settings("head").vocab_size * (P - 1)
    return {
        "weight_bytes_per_step": w,
        "kv_bytes_per_token": kv,
        "decode_tpot_ms": tpot * 1e3,
        "decode_tok_s": B / tpot,
        "prefill_flops": prefill_flops,
        "prefill_floor_ms": max(prefill_flops / rate, w / bw) * 1e3,
        "params": c.params,
    }


# ------------------------------------------------------------------------------------------------
# Backends


class Backend:
    """One way of generating with the model. `generate(ids, mask, n)` returns the [B, n] new ids."""

    name = ""
    memory = "torch"  # "torch": torch allocator stats; "device": cudaMemGetInfo deltas (own allocator)
    warmup = 1  # warm-up rounds; compiled backends need more (compile, then graph capture)

    def __init__(self, bench: "Bench"):
        self.bench = bench

    def setup(self) -> None: ...

    def fits(self, shape: Shape) -> bool:
        """Whether the backend as set up can run this shape (else it is closed and set up again)."""
        return True

    def generate(self, ids, mask, n: int): ...

    def resident_bytes(self) -> int:
        return 0

    def close(self) -> None: ...


def _module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class TorchBackend(Backend):
    """archc's module in a greedy loop; the prefill's head runs on the last position only (the module's
    logits_start = -1, as the ort backend's generation feeds onnxruntime), so a prefill whose full float32
    logits would not fit (PaLM/BLOOM at batch 16, prompt 2048: 33 GB) runs."""

    name = "torch"

    def setup(self):
        self.model = self.bench.archc_module()
        self.fn = self.model

    def resident_bytes(self):
        return _module_bytes(self.model)

    def generate(self, ids, mask, n):
        import numpy as np
        import torch

        from archc import feeds

        with torch.inference_mode():
            B, P = ids.shape
            kw = {}
            graph = self.bench.graph
            if "prefix_len" in graph.graph_inputs():  # the prompt is the bidirectional prefix (GLM)
                kw["prefix_len"] = torch.full((B,), P, dtype=torch.long, device=ids.device)
            glm2d = graph.model.position_ids is PositionIds.glm2d
            lens = np.full(B, P, np.int64)

            def positions(k):  # GLM's 2D positions as the runner feeds them (archc.feeds); the others' come from the mask
                if not glm2d:
                    return {}
                pos = feeds.positions(np.ones((B, P + k), np.int64), P if k == 0 else 1, PositionIds.glm2d, lens, k)
                return {"position_ids": torch.from_numpy(pos).to(ids.device)}

            logits, past = self.fn(ids, attention_mask=mask, **kw, **positions(0), logits_start=-1)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            out = [tok]
            ones = mask.new_ones(B, 1)
            for k in range(1, n):
                mask = torch.cat((mask, ones), 1)
                logits, past = self.fn(tok, attention_mask=mask, past_key_values=past, **kw, **positions(k))
                tok = logits[:, -1].argmax(-1, keepdim=True)
                out.append(tok)
            return torch.cat(out, 1)


class TorchCompileBackend(TorchBackend):
    """archc's fast decode path, exporters.torch_decode.Decoder: static KV cache, the decode step
    (forward, argmax, state update) compiled by inductor and replayed as CUDA graphs of several steps;
    q|k|v and gate|up packed unless the eager `torch` backend shares the module in this run. One
    Decoder per (batch, prompt + new tokens), made on the shape's first generate."""

    name = "torch-compile"
    warmup = 2

    def setup(self):
        super().setup()
        self.decoder, self.decoder_key = None, None

    def generate(self, ids, mask, n):
        from exporters.torch_decode import Decoder

        key = (ids.shape[0], ids.shape[1] + max(n, self.bench.shape.new_tokens if self.bench.shape else n))
        if self.decoder_key != key:
            self.decoder = None  # free the previous shape's cache and graph first
            self.decoder = Decoder(self.model, key[0], key[1], compile=True,
                                   pack="torch" not in self.bench.backend_names)
            self.decoder_key = key
        return self.decoder.generate(ids, mask, n)

    def close(self):
        self.decoder = None


class HfBackend(Backend):
    attn = "eager"
    static = False

    def setup(self):
        from archc.bench.hf import build_hf_model

        state = self.bench.archc_module().state_dict()
        self.model, self.eq = build_hf_model(self.bench.graph, state, dtype=self.bench.torch_dtype,
                                             device=self.bench.device, attn_implementation=self.attn)
        del state
        if not any(n.startswith("torch") for n in self.bench.backend_names):
            self.bench._module = None  # only the source of the weights: free its copy before measuring

    def resident_bytes(self):
        return _module_bytes(self.model)

    def generate(self, ids, mask, n):
        import torch

        kw = {"cache_implementation": "static"} if self.static else {}
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, num_beams=1, **kw)
        return out[:, ids.shape[1]:]

    def close(self):
        del self.model


class HfEagerBackend(HfBackend):
    name, attn = "hf-eager", "eager"


class HfSdpaBackend(HfBackend):
    name, attn = "hf-sdpa", "sdpa"


class HfCompileBackend(HfBackend):
    """transformers' own fast path: static KV cache; its generate compiles the decode step
    (torch.compile, mode reduce-overhead = CUDA graphs) when the cache is static."""

    name, attn, static = "hf-compile", "sdpa", True
    warmup = 2


class OrtBackend(Backend):
    """archc's ONNX export (cuda target on CUDA, portable elsewhere) through archc's runner
    (archc.runner.Session: IO binding, device-resident cache, greedy pick of the last logits)."""

    name = "ort"
    memory = "device"
    cuda_graph = True

    def setup(self):
        from archc.runner import Session

        b = self.bench
        target = "cuda" if b.cuda else "portable"
        self.logits = b.ort_logits or "all"
        model_dir, t = ort_export(b.work_dir, b.graph, target, b.dtype, self.logits, b.quant, b.hf_dir, log=b.log,
                                  kernels=b.kernels)
        if t is not None:
            b.export_s[model_dir.name] = t
        from archc.bench.genai import model_bytes

        self.export_s, self.model_bytes = b.export_s.get(model_dir.name), model_bytes(model_dir)
        self.model_dir = model_dir
        self.session = Session(model_dir, device="cuda" if b.cuda else "cpu", cuda_graph=self.cuda_graph)
        if b.cuda and self.session.device != "cuda":
            raise RuntimeError(f"onnxruntime did not start on CUDA ({self.session.note})")
        self._ids = self._prompts = None

    def generate(self, ids, mask, n):
        import torch

        if ids is not self._ids:  # the runner takes host lists; convert once per input, not per call
            self._ids, self._prompts = ids, ids.tolist()
        return torch.tensor(self.session.generate(self._prompts, max_new_tokens=n, greedy=True).ids)

    def close(self):
        self.session = None


class OrtNoGraphBackend(OrtBackend):
    """The same without CUDA-graph capture of the decode step (to measure what the graphs give)."""

    name, cuda_graph = "ort-nograph", False


class GenaiBackend(Backend):
    """onnxruntime-genai: its builder's export of the same checkpoint (built once per precision, shared
    by genai and genai-graph), its generator in a worker process of genai's python (archc.bench.genai).
    The worker does the timed calls itself (timed_runs), so no inter-process hop is inside a timing."""

    name = "genai"
    memory = "device"
    cuda_graph = False

    def setup(self):
        from archc.bench import genai

        b = self.bench
        if self.cuda_graph and not b.cuda:
            raise RuntimeError("CUDA graphs need --device cuda")
        python = genai.genai_python()
        hf_dir = b.hf_dir
        if hf_dir is None:  # the spec's seeded init, written once for both genai backends
            from archc.bench.hf import hf_equivalent

            eq = hf_equivalent(b.graph)
            if isinstance(eq, str):
                raise RuntimeError(f"no Hugging Face type holds this spec for genai's builder: {eq}")
            hf_dir = genai.seeded_hf_dir(b.graph, b.work_dir, b.dtype)
        genai.check_hf_dir(hf_dir)
        args = genai.builder_args(b.dtype, "cuda" if b.cuda else "cpu", b.quant)
        built = genai.build(python, hf_dir, b.work_dir, args, log=b.log)
        b.export_s.setdefault(built.model_dir.name, built.export_s)
        self.export_s, self.model_bytes = b.export_s[built.model_dir.name], built.model_bytes
        eos = json.loads((built.model_dir / "genai_config.json").read_text())["model"]["eos_token_id"]
        self.eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)  # genai holds these off to make N tokens
        self.worker = genai.Worker(python, genai.worker_log(built.model_dir, self.name))
        self.version = self.worker.ask({"op": "load", "model_dir": str(built.model_dir), "device": "cuda" if b.cuda else "cpu",
                                        "cuda_graph": self.cuda_graph}, timeout_s=b.genai_timeout_s)["version"]

    def timed_runs(self, ids, shape: Shape, warmup: int, prefill_repeats: int, repeats: int):
        """(prefill seconds, generate seconds, [B, N] tokens), timed in the worker as _measure times the others."""
        import torch

        r = self.worker.ask({"op": "measure", "prompts": ids.tolist(), "new_tokens": shape.new_tokens, "warmup": warmup,
                             "prefill_repeats": prefill_repeats, "repeats": repeats}, timeout_s=self.bench.genai_timeout_s)
        return r["prefill_s"], r["generate_s"], torch.tensor(r["tokens"])

    def close(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
            self.worker = None


class GenaiGraphBackend(GenaiBackend):
    """genai with enable_cuda_graph=1 (its decode step captured; static [batch, max_length] buffers)."""

    name, cuda_graph = "genai-graph", True


BACKEND_CLASSES = {c.name: c for c in (OrtBackend, OrtNoGraphBackend, TorchBackend, TorchCompileBackend, HfEagerBackend, HfSdpaBackend,
                                       HfCompileBackend, GenaiBackend, GenaiGraphBackend)}


# ------------------------------------------------------------------------------------------------
# The harness


@dataclass
class BackendResult:
    backend: str
    prefill_ms: float | None = None
    decode_tpot_ms: float | None = None
    decode_tok_s: float | None = None
    peak_mem_gib: float | None = None
    frac_decode_roofline: float | None = None
    frac_prefill_floor: float | None = None
    tokens_agree: int | None = None  # leading generated tokens equal to the reference backend's (first in the list)
    prefill_runs_ms: list = field(default_factory=list)
    generate_runs_ms: list = field(default_factory=list)
    setup_s: float | None = None
    wall_s: float | None = None  # everything this backend took for this shape: warm-up, compile, timed runs
    logits: str | None = None  # ort backends: the export's --logits (all | last; either way generation's head runs on one position)
    tokens_note: str | None = None  # why tokens_agree stopped short, where the harness knows (genai: the eos it masks)
    export_s: float | None = None  # ort / genai: seconds the export (archc) or the builder (genai) took
    model_bytes: int | None = None  # ort / genai: the model's ONNX files on disk (graph + external data)
    error: str | None = None


class Bench:
    """One spec, one dtype, one device; backends are built once and reused across shapes."""

    def __init__(self, graph: ComponentGraph, *, dtype: str = "fp16", device: str = "cuda", backends=("torch",),
                 repeats: int = 3, prefill_repeats: int = 5, work_dir: str | Path | None = None, limits: dict | None = None,
                 seed: int = 0, log: Callable[[str], None] = print, backend_repeats: dict[str, int] | None = None,
                 hf_dir: str | Path | None = None, quant=None, genai_timeout_s: float = 600.0, ort_logits: str | None = None,
                 kernels: str = "onnxruntime"):
        import torch

        if dtype not in SHORT_WORDS:
            raise UserError(f"--dtype: '{dtype}' is not one of {', '.join(SHORT_WORDS)}")
        self.graph, self.dtype, self.device = graph, dtype, torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; use --device cpu")
        self.torch_dtype = DType.from_short(dtype).to_torch()
        self.backend_names = list(backends)
        self.hf_dir = Path(hf_dir) if hf_dir is not None else None  # the checkpoint the ort and genai backends run
        if self.hf_dir is not None:
            other = [n for n in self.backend_names if n not in CHECKPOINT_BACKENDS]
            if other:
                raise UserError(f"--backends {','.join(other)}: run the spec's seeded init, not a Hugging Face directory's weights; "
                                f"with a directory use {', '.join(CHECKPOINT_BACKENDS)}")
        self.quant = quant if quant is not None and quant.active else None  # archc.quant.QuantSettings
        if self.quant is not None:
            other = [n for n in self.backend_names if n not in CHECKPOINT_BACKENDS]
            if other:
                raise UserError(f"--quant: the {','.join(other)} backends have no quantized form; use {', '.join(CHECKPOINT_BACKENDS)}")
        if ort_logits not in (None, "all", "last"):
            raise UserError(f"--logits {ort_logits}: choose all or last")
        self.ort_logits = ort_logits  # the ort export's --logits for every shape (None: all, the contract)
        from exporters.onnx_export import check_kernels

        # the ort export's --kernels (archc: archc's custom ops where they fit), checked against the target the ort
        # backend exports for: archc on the CPU is refused in one line, not silently run as onnxruntime's ops under
        # a report that says --kernels archc (genai_compare's ort_kernels)
        self.kernels = check_kernels(kernels, "cuda" if self.cuda else "portable").value
        self.genai_timeout_s = genai_timeout_s  # per request to the genai worker (load, or one shape's runs)
        self.export_s: dict[str, float] = {}  # export / build seconds by output directory name (timed once)
        self.repeats, self.prefill_repeats, self.seed, self.log = repeats, prefill_repeats, seed, log
        self.backend_repeats = dict(backend_repeats or {})  # timed generate runs per backend name, overriding `repeats`
        self._own_work_dir = work_dir is None  # a temporary one is removed by close()
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self._work_dir: Path | None = None  # made on first use (work_dir), inside the caller's try/close()
        self._made_dirs: list[Path] = []  # folders work_dir made, deepest first: close() removes those left empty
        self.limits = limits
        self._module = None
        self.shape: Shape | None = None  # the shape being measured (backends set up for it read it)
        self._backends: dict[str, Backend] = {}
        self._failed: dict[str, str] = {}

    # -- shared pieces --------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        """Where exports and builds go, made when a backend first needs it (a torch-only run, or one stopped
        or refused before any export, makes nothing). The folder and the record of it are made with Ctrl-C
        and SIGTERM held (archc.interrupts), so close() always knows what to remove."""
        if self._work_dir is None:
            from archc.interrupts import deferred_interrupts

            with deferred_interrupts():
                if self._work_dir_arg is None:
                    import tempfile

                    self._work_dir = Path(tempfile.mkdtemp(prefix="archc-bench-"))
                else:
                    import itertools
                    import os

                    from archc.files import nearest_existing

                    top, arg = nearest_existing(self._work_dir_arg), Path(os.path.abspath(self._work_dir_arg))
                    self._made_dirs = list(itertools.takewhile(lambda p: p != top, (arg, *arg.parents)))  # deepest first
                    try:
                        self._work_dir_arg.mkdir(parents=True, exist_ok=True)
                    except OSError as e:  # a UserError ends the bench (run() re-raises it); not one backend's failure
                        from archc.files import why

                        raise UserError(f"--work-dir {self._work_dir_arg}: cannot create it: {why(e)}") from None
                    self._work_dir = self._work_dir_arg
        return self._work_dir

    def archc_module(self):
        if self._module is None:
            from exporters.torch_module import build_module

            self._module = build_module(self.graph, dtype=self.torch_dtype, device=self.device)
        return self._module

    def get_limits(self) -> dict | None:
        """The card's copy bandwidth and GEMM rate. None on the CPU unless given: one torch copy and
        one GEMM there are not limits for multi-threaded, cache-resident decode kernels (they gave
        'copy 0.01 TB/s' and decode at 119% of such a 'roofline')."""
        if self.limits is None and self.cuda:
            self.limits = measure_limits(self.device, dtypes=(self.dtype,))
        return self.limits

    def _backend(self, name: str) -> Backend:
        if name in self._failed:  # failed on an earlier shape: the same line again
            raise BackendFailure(self._failed[name])
        if name in self._backends and not self._backends[name].fits(self.shape):
            self._backends.pop(name).close()  # set up again below, for this shape (memory measured afresh)
        if name not in self._backends:
            be = BACKEND_CLASSES[name](self)
            self._used_before_setup = _device_used(self.device)
            t, _ = wall(be.setup, self.device)
            be.setup_s = t
            be.used_before = self._used_before_setup
            self._backends[name] = be
        return self._backends[name]

    def inputs(self, shape: Shape):
        import torch

        g = torch.Generator().manual_seed(self.seed + 7919 * shape.prompt_len + shape.batch)
        vocab = self.graph.spec.vocab_size
        ids = torch.randint(1, vocab, (shape.batch, shape.prompt_len), generator=g).to(self.device)
        mask = torch.ones_like(ids)
        return ids, mask

    # -- measuring ------------------------------------------------------------------------------
    def run(self, shape: Shape) -> dict:
        import torch

        spec = self.graph.spec
        if shape.prompt_len + shape.new_tokens > spec.max_seq_len:
            raise UserError(f"--prompt-len {shape.prompt_len} + --new-tokens {shape.new_tokens} exceeds the spec's "
                            f"max_seq_len {spec.max_seq_len}; lower them or --set max_seq_len=...")
        if shape.new_tokens < 2:
            raise UserError("--new-tokens must be at least 2 (decode speed is measured between 1 and N tokens)")
        limits = self.get_limits()
        roof = roofline(self.graph, self.dtype, shape, limits) if limits else {"params": cost(self.graph).params}
        ids, mask = self.inputs(shape)
        self.shape = shape
        results, ref = [], None
        for name in self.backend_names:
            r = BackendResult(name)
            t_start = time.perf_counter()
            try:
                be = self._backend(name)
                r.setup_s = be.setup_s
                r.logits = getattr(be, "logits", None)
                r.export_s, r.model_bytes = getattr(be, "export_s", None), getattr(be, "model_bytes", None)
                self._measure(be, ids, mask, shape, r)
                toks = self._last_tokens
                if ref is None:
                    ref = toks
                else:
                    same = (toks.cpu() == ref.cpu()).all(0).tolist()
                    r.tokens_agree = next((i for i, s in enumerate(same) if not s), len(same))
                    eos = getattr(be, "eos_ids", ())
                    if r.tokens_agree < len(same) and set(ref[:, r.tokens_agree].tolist()) & set(eos):
                        r.tokens_note = (f"the reference picked eos ({', '.join(map(str, eos))}) at token {r.tokens_agree}; "
                                         f"{name} runs on past it, its eos masked (min_length)")
            except UserError:
                raise
            except Exception as e:  # a backend that cannot run this spec is reported, not fatal
                msg = failure_line(e)
                self._failed.setdefault(name, msg)
                r.error = msg
                self.log(f"  {name}: {msg}")
            r.wall_s = time.perf_counter() - t_start
            self.log(f"  {name}: {r.wall_s:.1f} s")
            if r.decode_tpot_ms:
                r.decode_tok_s = shape.batch / (r.decode_tpot_ms / 1e3)
                if limits:
                    r.frac_decode_roofline = r.decode_tok_s / roof["decode_tok_s"]
            if r.prefill_ms and limits:
                r.frac_prefill_floor = roof["prefill_floor_ms"] / r.prefill_ms
            results.append(r)
            if self.cuda:
                torch.cuda.empty_cache()
        return {
            "spec": spec.name, "dtype": self.dtype, "device": str(self.device), **asdict(shape),
            "roofline": roof, "backends": [asdict(r) for r in results],
        }

    def _measure(self, be: Backend, ids, mask, shape: Shape, r: BackendResult) -> None:
        import torch

        N = shape.new_tokens
        repeats = self.backend_repeats.get(be.name, self.repeats)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        if hasattr(be, "timed_runs"):  # a backend in another process times its own calls, the same way as below
            t1, tn, out = be.timed_runs(ids, shape, be.warmup, self.prefill_repeats, repeats)
        else:
            warm_n = N if be.warmup > 1 else min(N, 8)  # compiled backends: the exact shapes they will see
            for _ in range(be.warmup):
                be.generate(ids, mask, 1)
                be.generate(ids, mask, warm_n)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            t1 = [wall(lambda: be.generate(ids, mask, 1), self.device)[0] for _ in range(self.prefill_repeats)]
            tn = []
            for _ in range(repeats):
                t, out = wall(lambda: be.generate(ids, mask, N), self.device)
                tn.append(t)
        out = torch.as_tensor(out)
        if tuple(out.shape) != (shape.batch, N):
            raise RuntimeError(f"{be.name} returned {tuple(out.shape)} ids, expected {(shape.batch, N)}")
        self._last_tokens = out
        r.prefill_runs_ms = [x * 1e3 for x in t1]
        r.generate_runs_ms = [x * 1e3 for x in tn]
        r.prefill_ms = statistics.median(t1) * 1e3
        tpot = (statistics.median(tn) - statistics.median(t1)) / (N - 1) * 1e3
        if tpot > 0:
            r.decode_tpot_ms = tpot
        else:  # noise larger than the decode time (tiny models on a busy CPU)
            r.error = f"T({N}) <= T(1): timing noise exceeds decode time; raise --repeats or --new-tokens"
        if self.cuda:
            if be.memory == "torch":
                peak = be.resident_bytes() + torch.cuda.max_memory_allocated() - before
            else:
                peak = _device_used(self.device) - be.used_before
            r.peak_mem_gib = peak / 2**30

    def close(self) -> None:
        for be in self._backends.values():
            be.close()
        self._backends.clear()
        self._module = None
        if self._own_work_dir and self._work_dir is not None:
            import shutil

            shutil.rmtree(self._work_dir, ignore_errors=True)
        for d in self._made_dirs:  # a --work-dir folder this run made and left empty (stopped or refused before any export)
            try:
                d.rmdir()
            except OSError:
                break  # holds something (an export to keep): so do the folders above it
        self._made_dirs = []


def failure_line(e: BaseException) -> str:
    """The table's note for a backend that failed: `Type: first line of the message`, once (a BackendFailure
    already is that line: the genai worker's error, or this backend's failure on an earlier shape)."""
    if isinstance(e, BackendFailure):
        return str(e)
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _device_used(device) -> int:
    import torch

    if torch.device(device).type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info()
    return total - free


# ------------------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    import datetime
    import os
    import platform
    import subprocess

    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["card"] = torch.cuda.get_device_name()
        p = torch.cuda.get_device_properties(0)
        env["card_memory_gib"] = round(p.total_memory / 2**30, 1)
    for mod in ("transformers", "onnxruntime", "onnx"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    # ARCHC_COMMIT wins (a copy of the tree whose .git is stale or absent, as on the lent GPU machine, where
    # `git` reported the session's first commit); else git, with "-dirty" when the files differ from it
    env["archc_commit"] = os.environ.get("ARCHC_COMMIT") or None
    if env["archc_commit"] is None:
        try:
            env["archc_commit"] = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                                                 text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
        except Exception:
            env["archc_commit"] = None
    return env


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def render(run: dict, limits: dict | None, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 150)
    roof = run["roofline"]
    t = Table(title=f"{escape(run['spec'])}  {run['dtype']}  batch {run['batch']}  prompt {run['prompt_len']}  +{run['new_tokens']} tokens"
                    f"  ({roof['params'] / 1e9:.2f} B params)")
    for col in ("backend", "prefill ms", "% floor", "decode tok/s", "ms/token", "% roofline", "peak GiB", "tokens =", "note"):
        t.add_column(col, justify="left" if col in ("backend", "note") else "right")
    if limits:
        t.add_row("[dim]limit[/]", _f(roof["prefill_floor_ms"], "{:.2f}"), "100", _f(roof["decode_tok_s"]),
                  _f(roof["decode_tpot_ms"], "{:.3f}"), "100", "", "",
                  "[dim]roofline / GEMM floor[/]")
    for b in run["backends"]:
        t.add_row(b["backend"], _f(b["prefill_ms"], "{:.2f}"), _f(b["frac_prefill_floor"] and 100 * b["frac_prefill_floor"], "{:.0f}"),
                  _f(b["decode_tok_s"]), _f(b["decode_tpot_ms"], "{:.3f}"),
                  _f(b["frac_decode_roofline"] and 100 * b["frac_decode_roofline"], "{:.0f}"), _f(b["peak_mem_gib"], "{:.2f}"),
                  "ref" if b["tokens_agree"] is None and not b["error"] else _f(b["tokens_agree"], "{}"),
                  escape(b["error"] or (f"logits {b['logits']}" if b.get("logits") else ""))[:60])
    console.print(t)
    if not limits:
        console.print("[dim]no roofline on the CPU: a copy and a GEMM timed as single torch ops are not limits for "
                      "the multi-threaded, cache-resident decode kernels[/]")
        return
    gemm = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in limits["gemm_flops_per_s"].items())
    console.print(f"[dim]limits: copy {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s, GEMM {gemm}[/]")
