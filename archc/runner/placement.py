"""Which execution provider ran each node of a compiled model, from onnxruntime's profile (GPU checks)."""

from __future__ import annotations

import json
from pathlib import Path

from archc.model_dir import MODEL_FILE
from archc.runner import providers
from archc.runner.session import Session


def node_placement(model_dir: str | Path, device: str = "cuda") -> dict[str, tuple[str, str]]:
    """{ONNX node name: (op type, execution provider that ran it)} for one small prefill + decode step, read from
    onnxruntime's profile (the nodes after graph optimisation: fused nodes under their new names)."""
    import tempfile

    s = Session(model_dir, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        used = s.sess.get_providers()
        path = Path(model_dir) / MODEL_FILE if Path(model_dir).is_dir() else Path(model_dir)
        # archc's op library, where the model has its ops: from the metadata the session already read
        ops = providers.ort_ops_library(path, s.sess.get_modelmeta().custom_metadata_map)
        s.sess = providers._session(path, used, profile_prefix=str(Path(tmp) / "archc"), **({} if ops is None else {"ort_ops": ops}))
        s.generate([[0, 1, 2]], 2)
        prof = s.sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    out: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and "provider" in e.get("args", {}):
            name = e["name"].removesuffix("_kernel_time").removesuffix("_fence_before").removesuffix("_fence_after")
            out[name] = (e["args"].get("op_name", "?"), e["args"]["provider"])
    return out
