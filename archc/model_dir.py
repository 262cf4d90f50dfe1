"""A compiled model directory's layout: its file names, and the metadata keys that the ONNX
exporter writes into model.onnx and the runner reads back. Light (no onnx, no onnxruntime), so
the light commands can recognise a model directory too.
"""

from __future__ import annotations

MODEL_FILE = "model.onnx"  # the graph; onnxruntime-genai's genai_config.json names it as well
DATA_FILE = "model.onnx.data"  # every weight, external data, 64-byte aligned
SPEC_FILE = "spec.yaml"  # the resolved spec the model was compiled from (also in a training run's folder)
GENAI_CONFIG_FILE = "genai_config.json"  # onnxruntime-genai's model description
ORT_OPS_FILE = "archc_ort_ops.so"  # archc's onnxruntime custom-op library (exporters/ort_ops), in models that use its ops

# metadata_props of model.onnx
META_LOWERING = "archc.lowering"  # JSON {node: lowering that emitted it}
META_TARGET = "archc.target"  # portable | cuda
META_DTYPE = "archc.dtype"  # DType.short: fp32 | fp16 | bf16
META_KV_CACHE = "archc.kv_cache"  # concat | shared (absent in older models: concat)
META_LOGITS = "archc.logits"  # all | last (absent in older models: all)
META_NEXT_TOKEN = "archc.next_token"  # argmax | none
META_QUANT = "archc.quant"  # JSON archc.quant.QuantSettings; absent: not quantized
META_ORT_OPS = "archc.ort_ops"  # the file name (in the model folder) of the custom-op library onnxruntime must
# register before loading the model (`archc compile --kernels archc`); absent: the model uses onnxruntime's ops only
META_POSITION_IDS = "archc.position_ids"  # PositionIds: none | flat | glm2d (absent in older models: read from
# the rank of the position_ids input, archc.runner.session.position_layout)

# graph inputs beyond the I/O contract that the runner feeds when a model has them
LOGITS_START = "logits_start"  # int64 [1], an overridable initializer (default [0]): the first position the head
# computes, Python-style (0: every position, the contract; -1: the last); `--logits all` models only
