"""The torch reference backend: diffusers pipelines behind a numpy interface (see pipeline.py).

Importing this package imports torch and diffusers; nothing else in mlx_sd imports it.
"""

from .pipeline import PromptEncoding, ReferencePipeline, pipeline_class_for_checkpoint, torch_device

__all__ = ["PromptEncoding", "ReferencePipeline", "pipeline_class_for_checkpoint", "torch_device"]
