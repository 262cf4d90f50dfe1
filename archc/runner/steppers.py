"""How Session.generate's steps reach onnxruntime, and the device buffers they keep between steps.

CPU (_CpuSteps): numpy feeds; the cache grows by concatenation inside the model (present = past + new).
CUDA (_BoundSteps): IO binding. Models whose attention is all GroupQueryAttention (cuda target, fp16/bf16) get one
max-length cache per layer on the device, bound as both past and present (the op writes the new
tokens in place); other models keep their present OrtValues on the device and bind them as the
next step's past. Per token, only the attention mask / ids / positions go up (a few bytes per row)
and the last position's logits come down for sampling.
CUDA graphs (shared-cache models on CUDA): the session is made with the CUDA provider's
enable_cuda_graph, and each decode step runs on fixed device buffers bound once per (batch, max_len)
(_FixedBuffers): ids, positions, and an attention_mask of the full max_len width whose columns past the current
length are 0. For these models that is the same computation (GroupQueryAttention reads each row's
length from sum(mask) - 1; total_sequence_length = the mask width = the buffer length), and every
bound shape stays fixed, so onnxruntime captures the step once (gpu_graph_id per shape) and replays
it. Prefill and every other run pass gpu_graph_id = -1 (no capture).
logits_start: every step of a model with that input is fed -1 (GENERATE_LOGITS_START), so the head
computes the last position only. It is bound as a host OrtValue: onnxruntime's CUDA Slice reads its
starts on the host (a device copy would need a host copy back, which CUDA-graph capture refuses), and
IOBinding.bind_cpu_input cannot bind an overridable initializer (it looks the name up among the required
inputs), bind_ortvalue_input can. A model without it (exported before it) computes every position of the
prefill; on CUDA those logits stay on the device and only the last position comes to the host
(Session.last_position, a one-node Slice session).
Greedy decoding on the fixed-buffer path runs in windows (_Window, Session(decode_window=N)): the
next_token output of step i is bound as the input_ids of step i + 1 (a ring of [B] token rows on the
device), the feeds of the window's N steps are known in advance (mask and positions do not depend on the
tokens) and go up in one copy, and the N runs are queued without waiting for the device
(disable_synchronize_execution_providers), each on its own captured graph. The host reads the N tokens
once per window and checks them for stops (tokens past a stop are computed and dropped). Per token the
host then only queues a Run (53-95 us on an H200), which overlaps the device's previous step: a decode step
costs its GPU time alone (1.38 ms fp16 / 1.13 ms int4). The one-step loop's host share had already shrunk to
~70 us per token (session 4 estimated up to 0.25 ms), so the gain was +2-9% (benchmarks/RESULTS.md, "s6 10:58").
The CPU can run both device paths with host buffers (Session(io_binding=True | "static")): that is how
the tests and the benchmarks' CPU dry runs exercise them without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from archc.model_dir import LOGITS_START
from archc.runner.providers import _ort

GENERATE_LOGITS_START = -1  # generation reads the last position only (tests patch it here; Session.generate reads it here)
# greedy decode steps queued per window on the fixed-buffer path (_Window): each is one captured graph per shape,
# and the host waits for the device once per window; 1 = the one-step loop (Session(decode_window=1), A/B runs)
DECODE_WINDOW = 16

if TYPE_CHECKING:
    from archc.runner.session import Session


class _CpuSteps:
    """Host numpy feeds; present becomes the next past. step() returns the logits, or the model's
    next_token [B] when device_pick is set (Session.generate sets it)."""

    device_pick = False

    def __init__(self, s: Session, batch: int):
        self.s, self.past = s, s._empty_past(batch)

    def step(self, ids, mask, positions, lens):
        logits, self.past, next_token = self.s._forward(ids, mask, positions, lens if self.s.has_prefix else None, self.past,
                                                        GENERATE_LOGITS_START)
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
        # logits_start = -1 as a host OrtValue, bound to every step (see the module docstring)
        self.logits_start = (ort.OrtValue.ortvalue_from_numpy(np.array([GENERATE_LOGITS_START], np.int64), "cpu", 0)
                             if s.has_logits_start else None)
        self.window: _Window | None = None  # greedy decode windows (graph_id only), made at the first one

    def window_of(self, shapes: dict, steps: int) -> "_Window":
        """This shape's decode window of `steps` steps (graphs graph_id + 1 ... graph_id + steps), made once."""
        if self.window is None:
            self.window = _Window(self, shapes, steps, self.graph_id + 1)
        return self.window

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
        if self.logits_start is not None:
            io.bind_ortvalue_input(LOGITS_START, self.logits_start)
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
        # prefill of a model that computes every position (no logits_start input, not --logits last): slice
        # the last position on the device
        on_device = self.dev == "cuda" and (self.device_pick or s.logits_positions(ids.shape[1], GENERATE_LOGITS_START) > 1)
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
        if self.logits_start is not None:
            io.bind_ortvalue_input(LOGITS_START, self.logits_start)
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
    slots: dict  # feed name (or another key: _Window's (step, name)) -> (offset in elements, bound shape)

    @staticmethod
    def make(ort, device: str, shapes: dict) -> "_PackedFeeds":
        slots, n = {}, 0
        for name, shape in shapes.items():
            slots[name] = (n, tuple(int(d) for d in shape))
            n += math.prod(shape)
        host = np.zeros(n, np.int64)
        return _PackedFeeds(dict(shapes), host, ort.OrtValue.ortvalue_from_numpy(host, device, 0), slots)

    def bind(self, io, device: str, names: dict | None = None) -> None:
        """Bind every feed by pointer at its offset; `names` ({slot key: input name}) binds those slots only
        (_Window: the slots of one step, keyed (step, name))."""
        for key, name in (names or {k: k for k in self.slots}).items():
            off, shape = self.slots[key]
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


class _Window:
    """Greedy decode steps queued without a host round trip per token (see the module docstring): `steps`
    IO bindings over the stepper's cache, step i reading its ids from token row i and writing next_token
    into row i + 1, its positions / max_len-wide mask / prefix_len from feed slot i. Under CUDA graphs
    step i runs as graph first_graph_id + i, so every binding keeps the addresses its graph captured."""

    def __init__(self, st: _BoundSteps, shapes: dict, steps: int, first_graph_id: int):
        s, ort, B = st.s, st.ort, st.batch
        self.st, self.steps, self.batch = st, steps, B
        self.graph_ids = [first_graph_id + i for i in range(steps)] if s.cuda_graph else []  # none without capture
        self.captured: set = set()  # graph ids run at least once (released with the stepper)
        shapes = dict(shapes, attention_mask=(B, st.max_len))
        self.tok_host = np.zeros((steps + 1) * B, np.int64)
        self.tok_dev = ort.OrtValue.ortvalue_from_numpy(self.tok_host, st.dev, 0)
        # every step's feeds in one _PackedFeeds, keyed (step, feed name): one upload per window
        self.feeds = _PackedFeeds.make(ort, st.dev, {(i, name): sh for i in range(steps) for name, sh in shapes.items()})
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type([B, 1, s.vocab], _BoundSteps.FLOAT, st.dev, 0)  # unread
        self.io, self.opts = [], []
        tok, item = self.tok_dev.data_ptr(), self.tok_host.itemsize
        for i in range(steps):
            io = s.sess.io_binding()
            self.feeds.bind(io, st.dev, {(i, name): name for name in shapes})
            io.bind_input("input_ids", st.dev, 0, np.int64, [B, 1], tok + i * B * item)
            io.bind_output("next_token", st.dev, 0, np.int64, [B, 1], tok + (i + 1) * B * item)
            if st.logits_start is not None:
                io.bind_ortvalue_input(LOGITS_START, st.logits_start)
            for name, v in st.cache.items():
                io.bind_ortvalue_input(name, v)
                io.bind_ortvalue_output(name.replace("past_key_values.", "present."), v)
            io.bind_ortvalue_output("logits", self.logits)
            opts = ort.RunOptions()
            if s.cuda_graph:
                opts.add_run_config_entry("gpu_graph_id", str(self.graph_ids[i]))
            # queue the run and return: the next step's ids are already on the device (the host waits in run())
            opts.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self.io.append(io)
            self.opts.append(opts)

    def run(self, first: np.ndarray, feeds: list[dict]) -> np.ndarray:
        """Queue len(feeds) steps from the tokens `first` [B]; feeds[i] holds step i's positions / mask /
        prefix_len (the mask as wide as the step sees it: the slot's columns past it are 0). Returns the
        steps' tokens [len(feeds), B], read once the device is done."""
        w = len(feeds)
        self.tok_host[:self.batch] = first
        self.tok_dev.update_inplace(self.tok_host)  # the device is idle here: the previous window was read
        # the masks narrower than their slot are written left-aligned, 0 past them (_PackedFeeds.update)
        self.feeds.update({(i, name): v for i, f in enumerate(feeds) for name, v in f.items()})
        sess = self.st.s.sess
        for i in range(w):
            sess.run_with_iobinding(self.io[i], self.opts[i])
        self.captured.update(self.graph_ids[:w])
        self.io[w - 1].synchronize_outputs()  # the device finished every queued step (the runs did not wait)
        return self.tok_dev.numpy().reshape(self.steps + 1, self.batch)[1:w + 1]
