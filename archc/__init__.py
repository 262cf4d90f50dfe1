"""archc: a declarative architecture-spec compiler for decoder-only language models.

Light on import: nothing here pulls in torch or onnxruntime, so the spec commands start fast.
"""

from archc.errors import SpecError, UserError
from archc.graph import ComponentGraph, ComponentKind, compile
from archc.loader import load_spec, spec_from_dict
from archc.spec import Spec

__all__ = ["ComponentGraph", "ComponentKind", "Spec", "SpecError", "UserError", "compile", "load_spec", "spec_from_dict"]
__version__ = "0.1.0"
