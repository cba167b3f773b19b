"""Where each source tensor goes (a Route) and the per-tensor transforms, with their effect on shapes so
that configs can be inferred from a file's header before any tensor is read.

Every route ends in our MLX layout: 4-D conv weights `[out, in, kH, kW]` become `[out, kH, kW, in]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .errors import ConversionError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rows:
    """One of `parts` equal row blocks (OpenCLIP's fused in_proj -> q, k, v)."""

    part: int
    parts: int = 3
    expects = "a tensor of at least one axis, split evenly into q, k and v"

    def accepts(self, shape: Shape) -> bool:
        return len(shape) >= 1 and shape[0] % self.parts == 0

    def shape(self, shape: Shape) -> Shape:
        return (shape[0] // self.parts, *shape[1:])

    def __call__(self, array: mx.array) -> mx.array:
        size = array.shape[0] // self.parts
        return array[self.part * size : (self.part + 1) * size]


@dataclass(frozen=True)
class Transpose:
    """OpenCLIP's text_projection is used as x @ P; a Linear stores P transposed."""

    expects = "a matrix"

    def accepts(self, shape: Shape) -> bool:
        return len(shape) == 2

    def shape(self, shape: Shape) -> Shape:
        return tuple(reversed(shape))

    def __call__(self, array: mx.array) -> mx.array:
        return array.T


@dataclass(frozen=True)
class SqueezeToLinear:
    """LDM's VAE attention 1x1 convs `[C, C, 1, 1]` (or `[C, C, 1]`) -> Linear `[C, C]`."""

    expects = "a 1x1 convolution's [C, C, 1, 1] weight"

    def accepts(self, shape: Shape) -> bool:
        return 2 <= len(shape) <= 4 and all(extent == 1 for extent in shape[2:])

    def shape(self, shape: Shape) -> Shape:
        return shape[:2]

    def __call__(self, array: mx.array) -> mx.array:
        return array.reshape(array.shape[:2])


Transform = Rows | Transpose | SqueezeToLinear


@dataclass(frozen=True)
class Route:
    """One destination of a source tensor: component, parameter name, optional transform."""

    component: str
    name: str
    transform: Transform | None = None

    def torch_shape(self, shape: Shape) -> Shape:
        """The destination shape in torch layout (what config inference reads)."""
        if self.transform and not self.transform.accepts(shape):
            raise ConversionError(
                f"{self.component} weight {self.name!r} comes from a tensor of shape {shape}, where "
                f"{self.transform.expects} belongs; the file is damaged"
            )
        return self.transform.shape(shape) if self.transform else shape

    def apply(self, array: mx.array, dtype: mx.Dtype) -> mx.array:
        """Transform, move to MLX layout, cast."""
        if self.transform:
            array = self.transform(array)
        if array.ndim == 4:
            array = array.transpose(0, 2, 3, 1)
        return array.astype(dtype)


def mlx_shape(torch_shape: Shape) -> Shape:
    if len(torch_shape) == 4:
        out, inp, height, width = torch_shape
        return (out, height, width, inp)
    return torch_shape
