"""The request bodies, as pydantic models with A1111's field names and defaults.

Lenient where clients are sloppy: unknown keys are ignored (clients send `restore_faces`,
`script_args`, `send_images`... whether or not a server uses them) and a `null` counts as the field's
default. Strict on types: a value of the wrong type is a 422 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

A1111_SAMPLER = "Euler"  # what A1111 uses when a request names no sampler (its sampler_index default)
A1111_STEPS = 50  # A1111's API default


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Txt2ImgRequest(Lenient):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str = ""
    sampler_index: str = A1111_SAMPLER  # the pre-1.5 field; sampler_name wins when both are given
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = A1111_STEPS
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    denoising_strength: float | None = None  # hires fix's, in txt2img
    enable_hr: bool = False
    restore_faces: bool = False
    tiling: bool = False
    override_settings: dict[str, Any] = Field(default_factory=dict)
    script_name: str = ""
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    # hires fix, with A1111's API defaults (enable_hr turns it on; denoising_strength above is its strength)
    hr_scale: float = 2.0
    hr_upscaler: str = ""  # "": A1111's default latent mode
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_sampler_name: str = ""
    # variation seeds and the SDXL refiner (issue 21), A1111's names and defaults
    subseed: int = -1
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    refiner_checkpoint: str = ""
    refiner_switch_at: float = 0.8

    @field_validator("override_settings")
    @classmethod
    def _unset_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {key: setting for key, setting in value.items() if setting is not None}  # null: not overridden


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    denoising_strength: float = 0.75  # type: ignore[assignment]  # img2img's own, required there
    resize_mode: int = 0
    mask_blur: int = 4
    inpainting_fill: int = 0  # A1111's default "fill"; the engine inpaints as "original" (1)
    inpaint_full_res: bool = True
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class PngInfoRequest(Lenient):
    image: str


class OpenAIImageRequest(Lenient):
    """POST /v1/images/generations (the OpenAI images API); `model`, `quality`, `style`... are ignored."""

    prompt: str
    n: int = Field(1, ge=1, le=10)
    size: str | None = None  # "WIDTHxHEIGHT"; the model's native size when absent
    response_format: Literal["b64_json", "url"] = "b64_json"
    negative_prompt: str = ""  # Open WebUI's extension
    steps: int | None = None  # Open WebUI's extension
