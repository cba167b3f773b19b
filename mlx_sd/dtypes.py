"""Dtype tables, each written once: the storage dtypes of our model folders, and the element types of
safetensors files under the names mlx, numpy and torch give them."""

from __future__ import annotations

import mlx.core as mx

# The storage dtypes a converted model may have (`mlx-sd convert --dtype`), by name.
DTYPES: dict[str, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# safetensors' dtype codes -> (element type name, bytes per element). The name is the type's name in
# mlx, numpy and torch alike (numpy has no bfloat16: readers carry those bits as uint16).
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U32": ("uint32", 4), "U8": ("uint8", 1), "BOOL": ("bool", 1),
}  # fmt: skip


def safetensors_code(type_name: str) -> str | None:
    """The safetensors code of an element type name ("float16" -> "F16"), None for one it lacks."""
    return next((code for code, (name, _) in SAFETENSORS_DTYPES.items() if name == type_name), None)
