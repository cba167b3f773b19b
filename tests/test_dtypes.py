"""The dtype tables of mlx_sd.dtypes agree with what mlx, numpy and torch call and size each type."""

from __future__ import annotations

import numpy as np
import pytest

import mlx.core as mx
from mlx_sd.dtypes import DTYPES, SAFETENSORS_DTYPES, safetensors_code


def test_storage_dtypes_are_named_as_mlx_names_them():
    for name, dtype in DTYPES.items():
        assert str(dtype) == f"mlx.core.{name}"
        assert safetensors_code(name) is not None  # every storage dtype can be saved


@pytest.mark.parametrize("code", list(SAFETENSORS_DTYPES))
def test_safetensors_codes_name_and_size_their_element_type(code):
    torch = pytest.importorskip("torch")
    name, size = SAFETENSORS_DTYPES[code]
    assert getattr(torch, name).itemsize == size
    if name != "bfloat16":
        assert np.dtype(name).itemsize == size
    if hasattr(mx, name):
        assert getattr(mx, name).size == size
    assert safetensors_code(name) == code


def test_unknown_type_has_no_code():
    assert safetensors_code("complex64") is None
