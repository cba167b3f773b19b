"""The converter's small public types: what to do (ConvertOptions), how far it got
(ConversionProgress), what it found and wrote (ConversionReport)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlx_sd.config import FAMILIES, PREDICTION_TYPES
from mlx_sd.dtypes import DTYPES
from mlx_sd.infotext import model_hash

from .errors import ConversionError


@dataclass(frozen=True)
class ConvertOptions:
    dtype: str = "float16"  # storage dtype of the written weights
    family: str | None = None  # force the family when detection cannot tell
    prediction: str | None = None  # force "epsilon" or "v_prediction"
    vae: Path | None = None  # a separate VAE file replacing the checkpoint's own
    allow_pickle: bool = False  # read .ckpt/.pt with torch's weights-only unpickler
    prefer_ema: bool = False  # use a single file's EMA UNet weights when it has both
    revision: str | None = None  # Hugging Face repo revision
    variant: str | None = None  # diffusers weight variant, e.g. "fp16"
    hub_cache: Path | None = None  # Hugging Face cache folder (default: huggingface_hub's)

    def __post_init__(self) -> None:
        checks = (
            ("--dtype", self.dtype, tuple(DTYPES)),
            ("--family", self.family, (None, *FAMILIES)),
            ("--prediction", self.prediction, (None, *PREDICTION_TYPES)),
        )
        for flag, value, allowed in checks:
            if value not in allowed:
                choices = ", ".join(a for a in allowed if a)
                raise ConversionError(f"{flag} {value!r} is not one of {choices}")
        for name in ("vae", "hub_cache"):  # callers may pass strings
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        if self.vae is not None and not self.vae.is_file():
            raise ConversionError(f"--vae {self.vae}: no such file")


@dataclass(frozen=True)
class ConversionProgress:
    stage: str  # "fetch", "read", "write", "validate", "done"
    done: int
    total: int
    message: str = ""


@dataclass
class ConversionReport:
    output: Path
    source: str
    source_kind: str
    family: str
    family_by: str
    prediction_type: str
    prediction_by: str
    in_channels: int
    default_size: int
    dtype: str
    sha256: str
    hashed: str
    parameters: dict[str, int]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped: int = 0
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """What was detected and written, one fact per line (the CLI prints these)."""
        kind = {9: " (inpainting)", 8: " (InstructPix2Pix, 8 input channels)"}.get(self.in_channels, "")
        out = [
            f"source:      {self.source} ({self.source_kind})",
            f"family:      {self.family}{kind}  [{self.family_by}]",
            f"prediction:  {self.prediction_type}  [{self.prediction_by}]",
            f"size:        {self.default_size}x{self.default_size} default",
            f"model hash:  {model_hash(self.sha256)}  (SHA-256 of {self.hashed})",
            "components:  " + ", ".join(f"{name} {count / 1e6:.1f}M" for name, count in self.parameters.items()),
            f"written:     {self.output} ({self.dtype}) in {self.seconds:.1f} s",
        ]
        out += [f"note:        {note}" for note in self.notes]
        if self.dropped:
            out.append(f"note:        left out {self.dropped} unused tensors (training buffers, ids, unused layers)")
        if self.ignored:
            more = f" and {len(self.ignored) - 3} more" if len(self.ignored) > 3 else ""
            shown = ", ".join(self.ignored[:3]) + more
            out.append(f"warning:     ignored {len(self.ignored)} unknown tensors: {shown}")
        out += [f"warning:     {warning}" for warning in self.warnings]
        return out
