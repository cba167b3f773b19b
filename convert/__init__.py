"""The converter: single-file LDM/SGM checkpoints, diffusers folders and Hugging Face repos -> our
MLX model folder (`mlx_sd.model_format`). The engine knows only its own names; every mapping from
another format lives here, one table per source format."""

from .errors import ConversionCancelled, ConversionError
from .options import ConversionProgress, ConversionReport, ConvertOptions
from .orchestrator import convert_model

__all__ = [
    "ConversionCancelled", "ConversionError", "ConversionProgress", "ConversionReport", "ConvertOptions", "convert_model",
]
