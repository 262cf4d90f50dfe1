"""Shared by the ONNX tests: one fixed sequence of feeds (a left-padded prefill, then cached
single-token steps) run through onnxruntime and through the PyTorch module, so every comparison
feeds both sides exactly the same ids, mask, positions and prefix lengths."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnxruntime as ort

import archc
from archc import feeds as archc_feeds
from archc.components import PositionIds


def session(d) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def feeds(spec, inputs: set[str], layout: PositionIds, steps: int = 3, pads=(0, 2), prompt: int = 5, seed: int = 0) -> Iterator[dict]:
    """The model inputs (without the cache) for the prefill and `steps` decode steps."""
    rng = np.random.default_rng(seed)
    B = len(pads)
    ids = rng.integers(0, spec.vocab_size, (B, prompt))
    mask = np.ones((B, prompt), np.int64)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    prefix = np.array([prompt - n for n in pads], np.int64)
    for _ in range(steps + 1):
        f = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in inputs:
            f["position_ids"] = archc_feeds.positions(mask, ids.shape[1], layout)
        if "prefix_len" in inputs:
            f["prefix_len"] = prefix
        yield f
        ids = rng.integers(0, spec.vocab_size, (B, 1))
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)


def real_positions(f: dict) -> np.ndarray:
    """[B, seq] bool: the step's positions that hold real tokens (not left padding)."""
    return f["attention_mask"][:, -f["input_ids"].shape[1]:].astype(bool)


def run_ort(sess, spec, extra: dict | None = None, **kw) -> list[tuple[dict, np.ndarray]]:
    """(feeds, logits) per step, the cache carried from present to past; `extra`: more feeds for every
    step (e.g. logits_start)."""
    names = {i.name: i for i in sess.get_inputs()}
    dt = np.float16 if names["past_key_values.0.key"].type == "tensor(float16)" else np.float32
    kv, hd = spec.attention.kv_heads, spec.attention.head_dim
    B = len(kw.get("pads", (0, 2)))
    past = {f"past_key_values.{i}.{t}": np.zeros((B, kv, 0, hd), dt) for i in range(spec.n_layers) for t in ("key", "value")}
    out_names = [o.name for o in sess.get_outputs()]
    results = []
    layout = archc.compile(spec).model.position_ids  # the graph's layout, not a guess from the input's rank
    for f in feeds(spec, set(names), layout, **kw):
        outs = dict(zip(out_names, sess.run(None, {**f, **past, **(extra or {})})))
        past = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
        if "next_token" in outs:  # the model's greedy pick is numpy's argmax of its own last-position logits
            np.testing.assert_array_equal(outs["next_token"][:, 0], outs["logits"][:, -1].argmax(-1))
        results.append((f, outs["logits"]))
    return results


def run_torch(module, graph, **kw) -> list[tuple[dict, np.ndarray]]:
    """(feeds, logits) per step from the PyTorch module, with its own cache."""
    import torch

    inputs = set(graph.graph_inputs())
    results, past = [], None
    for f in feeds(graph.spec, inputs, graph.model.position_ids, **kw):
        t = lambda k: torch.tensor(f[k]) if k in f else None  # noqa: E731
        with torch.no_grad():
            logits, past = module(t("input_ids"), t("attention_mask"), t("position_ids"), t("prefix_len"), past)
        results.append((f, logits.numpy()))
    return results
