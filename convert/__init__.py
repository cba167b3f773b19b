"""The converter: single-file LDM/SGM checkpoints, diffusers folders and Hugging Face repos -> our
MLX model folder (`mlx_sd.model_format`). The engine knows only its own names; every mapping from
another format lives here, one table per source format."""

from .errors import ConversionCancelled, ConversionError
from .options import ConversionReport, ConvertOptions, Progress
from .orchestrator import convert_model

__all__ = ["ConversionCancelled", "ConversionError", "ConversionReport", "ConvertOptions", "Progress", "convert_model"]
