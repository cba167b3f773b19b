"""Replacing modules of a built model by equivalents, as `mlx.nn.quantize` replaces Linear layers.

Device formulations (mlx_sd.cpu.accelerate) and block-wise evaluation (mlx_sd.block_evaluation)
change how a module computes, never its parameters: the replacement is an object of another class
holding the same parameters, children and attributes, so weight files and parameter names stay
those of the plain model.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import mlx.nn as nn

M = TypeVar("M", bound=nn.Module)


def as_class(module: nn.Module, cls: type[M], **attributes: object) -> M:
    """A new `cls` (a subclass of module's class, or one computing the same) holding module's
    parameters, children and attributes, plus `attributes`. `module` itself is left as it was."""
    swapped = cls.__new__(cls)
    dict.update(swapped, module)  # parameters and child modules
    swapped.__dict__.update(module.__dict__)  # plain attributes (stride, heads, ...)
    for name, value in attributes.items():
        object.__setattr__(swapped, name, value)
    return swapped


def replace_modules(model: M, replacement: Callable[[nn.Module], nn.Module | None]) -> M:
    """`model` with every module (itself included) for which `replacement` returns a module replaced
    by it, and the replacements' own modules visited in turn. `model` is left as it was: modules on
    the way to a replacement are shallow copies, everything else (parameters included) is shared."""
    return _rebuilt(model, replacement)


def _rebuilt(value, replacement):
    if isinstance(value, nn.Module):
        module = replacement(value)
        if module is None:  # not `or`: a module without parameters is an empty dict, so false
            module = value
        changed = {key: _rebuilt(child, replacement) for key, child in module.items()}
        changed = {key: child for key, child in changed.items() if child is not module[key]}
        if changed and module is value:
            module = as_class(value, type(value))
        for key, child in changed.items():
            dict.__setitem__(module, key, child)
        return module
    if isinstance(value, (list, tuple)):
        items = [_rebuilt(item, replacement) for item in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    if isinstance(value, dict):
        items = {key: _rebuilt(item, replacement) for key, item in value.items()}
        return items if any(items[key] is not value[key] for key in value) else value
    return value
