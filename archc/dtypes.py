"""The one dtype vocabulary: the spec's `dtype`, `archc compile --dtype`, `archc bench --dtype`, the
cost model's KV-cache bytes and the exported model's `archc.dtype` metadata all name a
floating-point type with DType.

Each value has two spellings. The full name ("float16") is the spec field's value and the attribute
name in torch and numpy. The short word ("fp16") is what the command-line options take and what an
exported model records. Light: torch is imported only by `to_torch`.
"""

from __future__ import annotations

from enum import Enum


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]

    @property
    def short(self) -> str:
        """The command-line word: fp32, fp16, bf16."""
        return _SHORT[self]

    @classmethod
    def from_short(cls, word: str) -> DType:
        """fp32 / fp16 / bf16 -> DType; KeyError for anything else (callers name their option)."""
        return _FROM_SHORT[word]

    @classmethod
    def of(cls, value: DType | str) -> DType:
        """A DType from a DType, a short word or a full name (Python callers pass either spelling)."""
        if isinstance(value, DType):
            return value
        return _FROM_SHORT[value] if value in _FROM_SHORT else cls(value)

    def to_torch(self):
        import torch

        return {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}[self]


_ITEMSIZE = {DType.float32: 4, DType.float16: 2, DType.bfloat16: 2}
_SHORT = {DType.float32: "fp32", DType.float16: "fp16", DType.bfloat16: "bf16"}
_FROM_SHORT = {word: d for d, word in _SHORT.items()}
SHORT_WORDS = tuple(_SHORT[d] for d in DType)  # ("fp32", "fp16", "bf16"), in the enum's order
