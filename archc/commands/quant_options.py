"""The weight-only quantization options of `archc compile`, `archc bench` and `archc show` (one definition, one check):
the option declarations below and `quant_settings`, which turns their values into archc.quant.QuantSettings
or one line naming the option (exit 2). Light: archc.quant imports no numpy, torch or onnx."""

from __future__ import annotations

from typing import Annotated

import typer

from archc.errors import UserError

QuantOption = Annotated[str, typer.Option(help="none | int4 | int8: weight-only quantization of the attention and MLP projections "
                                               "(onnxruntime com.microsoft MatMulNBits).")]
QuantBlockSizeOption = Annotated[int, typer.Option(help="Weights per scale along the input dimension (a power of two >= 16).")]
QuantSchemeOption = Annotated[str, typer.Option(help="symmetric (no zero points) | asymmetric (a zero point per block).")]
QuantAccuracyLevelOption = Annotated[int, typer.Option(help="MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                                                            "(how A may be downcast).")]
QuantHeadOption = Annotated[bool, typer.Option("--quant-head", help="Quantize the output head too (default: it stays in --dtype). "
                                                                    "onnxruntime-genai's int4 export quantizes its lm_head, so this is "
                                                                    "the comparable size.")]
QuantMethodOption = Annotated[str, typer.Option(help="rtn (round-to-nearest on each block's range) | search (per block, a few shrunk "
                                                     "ranges and least-squares scales tried, the least squared error kept; never worse "
                                                     "than rtn per block, no data, ~3x rtn's quantization time).")]


def quant_settings(quant: str, block_size: int, scheme: str, accuracy_level: int, head: bool, method: str, dtype: str):
    """The options' QuantSettings, checked against `dtype` (fp32 | fp16 | bf16, already checked by the caller)."""
    from archc.dtypes import DType
    from archc.quant import QuantKind, QuantMethod, QuantScheme, QuantSettings

    for option, value, enum in (("--quant", quant, QuantKind), ("--quant-scheme", scheme, QuantScheme),
                                ("--quant-method", method, QuantMethod)):
        if value not in {v.value for v in enum}:
            raise UserError(f"{option} {value}: choose one of {', '.join(v.value for v in enum)}")
    return QuantSettings(QuantKind(quant), block_size, QuantScheme(scheme), accuracy_level, head,
                         QuantMethod(method)).check(DType.from_short(dtype))
