"""Test-wide setup: Qt runs offscreen, and mlx_sd is imported before anything loads mlx.core
(so the OpenBLAS binding in mlx_sd.blas applies to the whole test session)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlx_sd  # noqa: E402,F401
